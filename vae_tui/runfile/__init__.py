"""The run directory's format, owned here and only here: file names (layout), record schemas and
the words for a run's state (schema), the one atomic writer and tolerant readers (io), metrics
and events (metrics), and commands to a running trainer (control). No torch: watchers, `runs`
and `export` read runs with it, and the trainer writes them with it. docs/run-format.md says
the same for other programs."""
