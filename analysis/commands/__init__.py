"""The subcommands of ``lora-dropout`` by group: `runs` (train, probe, evaluate, summary), `studies` (sweep,
collect, reproduce), `certify`, and what they share (`common`). `analysis.cli` assembles the parser."""
