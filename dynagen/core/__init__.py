"""The ground floor: settings, storage (local or s3://), prompt sources, row records and the prompt rule, errors,
joining Ray. Imports nothing of ours above it (``actors``, ``pipelines``, ``jobs``, ``dynagen.app``)."""
