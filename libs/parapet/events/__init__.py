"""The JetStream event contracts every producer and consumer shares (docs/contracts.md): one definition
of each stream, its subjects and its CloudEvents headers, so two services can never declare one stream
differently."""
