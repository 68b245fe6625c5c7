"""Writing safely: atomic files and folders (``files``), output-folder ownership and locks
(``outputs``), progress bars for a terminal and plain lines for a log (``progress``)."""
