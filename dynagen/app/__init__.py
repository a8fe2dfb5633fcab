"""The top floor: what people and clusters call. The CLI (``cli/``), the online Serve app (``serve/``), the local test
servers (``devservers``) and the manifest validator (``k8s_validate``). Nothing below imports it."""
