"""Model providers behind one small protocol (``base.Provider``), one module each."""
