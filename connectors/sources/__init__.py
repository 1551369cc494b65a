"""Sources: a record is stored on its ingest topic (acks=all, in sync) before the sender is
answered; input that can never be taken goes to a dead-letter topic with a specific error."""
