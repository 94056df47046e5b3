"""Exit statuses shared by the CLI, the trainer and the sbatch script."""

OK = 0
# A problem with what the user asked for (config, data, paths): message, no traceback.
USER_ERROR = 2
# "Stopped early on purpose, checkpoint written: requeue me." BSD's EX_TEMPFAIL.
REQUEUE = 75
