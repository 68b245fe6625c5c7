"""Writing safely: atomic files and folders, and reading what sits in an output folder only when it
is a regular file (``files``), output-folder ownership and locks (``outputs``), progress bars for a
terminal and plain lines for a log (``progress``)."""
