"""The output dataset: where every file goes (``layout``), step records, the aggregation into
group files, the group report and its figures, tables and provenance.

Imports only the study layer; the engine and the steps write through it.
"""
