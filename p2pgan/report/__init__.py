"""A results folder made readable: ``report.md``, a self-contained ``report.html`` and terminal views.

``load`` reads a folder into typed records, ``content`` turns one into a document (sections of
tables, notes and figures), ``figures`` draws the pictures, and ``markdown``, ``html`` and
``terminal`` render the document. ``write.write_report(run_dir)`` does all of it for one folder.
The package reads only the files of the folder (plus the shipped class names of the built-in
domains), so it works on folders written by older versions, by interrupted runs and by other hosts.
"""
