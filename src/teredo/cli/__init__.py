"""The `teredo` command and its verbs."""
