"""The exit codes of ``shoal``. Scripts drive the CLI by them, so every failure maps to exactly one."""

EXIT_OK = 0
EXIT_JOB_FAILED = 1  # the job failed or was cancelled; also any other failure
EXIT_USAGE = 2  # bad flags, invalid spec (locally or as judged by the node)
EXIT_UNREACHABLE = 3  # cannot reach the API, or it refused us (bad signature, key not authorized there)
EXIT_NOT_FOUND = 4
EXIT_TIMEOUT = 124  # like timeout(1): the wait ran out, the job goes on
EXIT_INTERRUPTED = 130  # Ctrl-C, as a shell reports SIGINT

EXIT_CODES_HELP = (
    f"Exit codes: {EXIT_OK} done; {EXIT_JOB_FAILED} the job (or sweep) failed or was cancelled, or another failure; "
    f"{EXIT_USAGE} bad flags or spec; {EXIT_UNREACHABLE} the node is unreachable or refused the key; {EXIT_NOT_FOUND} "
    f"no such job or sweep; {EXIT_TIMEOUT} the wait ran out (the job goes on: shoal wait ID); "
    f"{EXIT_INTERRUPTED} Ctrl-C."
)
