"""The edges of the pipeline, each runnable on its own by an integration team: ``sources`` take
hospital input onto the ingest topics, ``sinks`` take the out topics to the parties."""
