"""The online app: its HTTP contract (``api``: request/response models and pure checks) and its Ray Serve
deployments (``deployments``: ``app_builder`` is the RayService import path)."""
