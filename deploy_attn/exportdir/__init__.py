"""An export directory: its file layout, the transaction that writes it, its config, the reader."""


