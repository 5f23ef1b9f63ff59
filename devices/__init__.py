"""Device profiles and deployment bundles (installed as cunet_edge.devices).

Nothing is exported from here yet: profiles land with the devices issue.
"""

__all__: list[str] = []
