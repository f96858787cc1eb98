"""Built-in drivers. Each module defines ``sync_class`` and/or ``async_class``."""
