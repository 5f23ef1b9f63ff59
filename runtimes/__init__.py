"""One runner per backend behind one interface (installed as cunet_edge.runtimes).

Nothing is exported from here yet: runners land with the export issue.
"""

__all__: list[str] = []
