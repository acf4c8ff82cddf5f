"""The experiment commands, each a module with a ``main(argv)``: compare, audit, score, report,
reproduce and pretrain. They drive the library (trainer, data, metrics) and hold no training
logic of their own; ``atjt <command>`` (atjt_dist.main) dispatches to them, and
``python -m atjt_dist.<command>`` keeps working through a one-line module per command."""
