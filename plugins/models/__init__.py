"""Built-in advisor plugins (import name ``advisor_plugins``)."""
