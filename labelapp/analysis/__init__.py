"""Pure statistics (stdlib only, tested without a database): inter-annotator agreement, annotator reliability, length-controlled win-rates."""
