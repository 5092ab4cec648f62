"""The service kit: everything a Parapet service needs besides its own logic (see ``docs/kit.md``).

Import from the modules (``parapet.kit.server``, ``parapet.kit.errors``, ...); this package re-exports
nothing so that importing one part never drags in the rest.
"""
