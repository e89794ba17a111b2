"""Every default in one place: timeouts, retry counts, poll intervals, size limits.

A reader who wants to know "how long do we wait for a cold start" finds it here and nowhere else.
"""

from __future__ import annotations

# --- HTTP to our gateway ---------------------------------------------------------------------
CONNECT_TIMEOUT_S = 10.0
READ_TIMEOUT_S = 30.0
COLD_START_TIMEOUT_S = 300.0
EXECUTION_TIMEOUT_S = 1200.0
LONG_POLL_WAIT_S = 20
LONG_POLL_MAX_S = 25
LONG_POLL_MIN_S = 1  # near a deadline the long poll still waits this long: never a tight loop
POLL_MIN_INTERVAL_S = 0.25  # an answer with nothing new: the next poll waits this long after it
POLL_MIN_SLEEP_S = 0.02  # and every poll waits at least this long: the loop never spins
RETRY_AFTER_CAP_S = 120.0
RETRY_MAX_ATTEMPTS = 6
# One request, all its retries included, gives up after this long (a call's own `timeout` and a
# wait's phase budgets can only shorten it).
REQUEST_BUDGET_S = 120.0
RETRY_INITIAL_DELAY_S = 0.5
RETRY_MAX_DELAY_S = 8.0

# --- ComfyUI (inside the container, or behind `ryla serve`) ------------------------------------
COMFY_HOST = "127.0.0.1"
COMFY_PORT = 8188
COMFY_READY_TIMEOUT_S = 120.0
COMFY_READY_POLL_S = 0.05  # the issue allows at most 50 ms between readiness probes
COMFY_STOP_GRACE_S = 5.0
COMFY_HTTP_TIMEOUT_S = 30.0
COMFY_CONNECT_TIMEOUT_S = 5.0
#: A transfer to or from ComfyUI may take COMFY_HTTP_TIMEOUT_S plus its size at this rate,
#: and no longer: a ComfyUI that trickles bytes cannot hold a job past it (2 Mbit/s).
COMFY_MIN_TRANSFER_BYTES_PER_S = 256 * 1024
COMFY_UNSIZED_DOWNLOAD_S = 3600.0  # a /view answer without a content-length, at the most
COMFY_HISTORY_POLL_S = 0.5
COMFY_LOG_TAIL_LINES = 40
COMFY_READY_PROBE_TIMEOUT_S = 1.0  # one readiness probe; the ready deadline bounds the whole wait
COMFY_WS_OPEN_TIMEOUT_S = 5.0
COMFY_WS_RECONNECT_S = 2.0  # while following a job by polling, retry the socket this often
COMFY_WS_CONNECT_RETRY_S = 0.5  # after a failed connect, subscribers fail fast this long
COMFY_WS_SILENCE_CHECK_S = 5.0  # socket quiet this long: look at /history too, just in case
COMFY_WS_MAX_FRAME_BYTES = 64 * 1024 * 1024  # preview frames can be large; they are dropped
COMFY_UNREACHABLE_GRACE_S = 10.0  # no process to watch: give up after this long without answers
COMFY_RESTART_MAX_ATTEMPTS = 5  # restarts in a row of a ComfyUI `ryla serve` launched
COMFY_RESTART_BACKOFF_S = 0.5  # the pause before the first restart, doubled for each next one
COMFY_RESTART_BACKOFF_MAX_S = 30.0  # the longest pause between two restarts
COMFY_RESTART_STABLE_S = 60.0  # up this long: the next crash starts a new count of attempts
COMFY_PROBE_EVERY_S = 1.0  # the monitor probes ComfyUI this often (for /health, restarts)
COMFY_PROBE_FRESH_S = 0.25  # a job trusts a probe this recent instead of probing itself
COMFY_CANCEL_GRACE_S = 15.0  # after an interrupt, wait this long for ComfyUI to confirm it
COMFY_DOWNLOAD_CHUNK_BYTES = 256 * 1024
INPUT_URL_MAX_BYTES = 256 * 1024 * 1024  # one input file fetched by URL
INPUT_URL_TIMEOUT_S = 120.0  # one input file fetched by URL, from connect to the last byte
TEXT_OUTPUT_INLINE_MAX_CHARS = 64 * 1024  # a text output longer than this is a file only

# --- workflows ---------------------------------------------------------------------------------
WORKFLOW_MAX_BYTES = 32 * 1024 * 1024
WORKFLOW_MAX_NODES = 5000
#: nesting of a workflow's JSON (node > inputs > value > ...); real ones stay under 10
WORKFLOW_MAX_DEPTH = 64

# --- the modal CLI -------------------------------------------------------------------------------
MODAL_LOGS_TIMEOUT_S = 30.0
MODAL_DEPLOY_TIMEOUT_S = 1800.0
MODAL_COMMAND_TIMEOUT_S = 60.0
KILL_GRACE_S = 0.3
DEFAULT_APP_NAME = "ryla-comfyui"
PROC_STDERR_TAIL_LINES = 40  # stderr lines kept for error messages
PROC_MAX_LINE_BYTES = 1024 * 1024  # a longer "line" is handed over in parts
MODAL_LOGS_KEEP_LINES = 10_000  # lines `logs()` keeps in its result (the callback sees all)
MODAL_RETRIES = 2  # extra attempts for transient failures (connect errors, UNAVAILABLE)
MODAL_RETRY_WAIT_MAX_S = 4.0  # cap of one backoff wait; the overall deadline caps them all
MODAL_RETRY_WAIT_MULTIPLIER_S = 0.5
PACKAGED_APP_MODULE = "ryla_modal.cloud.app"  # what `ryla deploy` deploys without an argument

# --- the Modal app (ryla_modal.cloud.app; each has a RYLA_* variable, see cloud/settings) ---
MODAL_GPU = "L40S"
COMFYUI_REPO = "https://github.com/Comfy-Org/ComfyUI.git"
COMFYUI_COMMIT = "a125cd84b054a57729b5eecab930ca9408719832"  # ComfyUI 0.3.64
MODAL_TORCH_PACKAGES = ("torch", "torchvision", "torchaudio")
MODAL_MODELS_VOLUME = "ryla-models"
MODEL_MIN_BYTES_PER_S = 256 * 1024  # the slowest a model download may go (7 GB: ~8 h at most)
MODEL_UNSIZED_DOWNLOAD_S = 4 * 3600.0  # a model answer without a content-length, at the most
MODAL_OUTPUTS_VOLUME = "ryla-outputs"
MODAL_JOBS_DICT = "ryla-jobs"
MODAL_SCALEDOWN_WINDOW_S = 300
MODAL_WORKER_MAX_INPUTS = 1  # ComfyUI runs one prompt at a time; more would queue inside it
MODAL_GATEWAY_MAX_INPUTS = 100
MODAL_WORKER_TIMEOUT_S = 1800  # one job's wall clock on the GPU (EXECUTION_TIMEOUT_S + slack)
MODAL_WORKER_STARTUP_TIMEOUT_S = 600  # @modal.enter: ComfyUI start incl. custom nodes
MODAL_GATEWAY_TIMEOUT_S = 600
MODAL_DOWNLOAD_TIMEOUT_S = 3600
MODAL_LOST_JOB_GRACE_S = 30.0  # a queued job with no FunctionCall after this long: lost
MODAL_CALL_CHECK_INTERVAL_S = 5.0  # the gateway asks Modal about one job's FunctionCall this often
MODAL_STORE_LIST_CACHE_S = 5.0  # a full scan of the jobs Dict (pending count) is reused this long
MODAL_MODEL_LIST_TTL_S = 30.0  # model files on the volume are re-listed this often
MODAL_CANCEL_POLL_S = 1.0  # a running worker looks for a cancel request this often
MODAL_SIGNAL_TTL_S = 3600  # a job's wake-up partition is dropped this long after its last signal
MODAL_SIGNAL_BACKLOG = 1000  # wake-ups one long poll takes off a job's partition at once

# --- the job API (gateway) and `ryla serve` ------------------------------------------------------
#: Job ids end up in URLs, file names and ComfyUI's prompt_id: a UUID fits, so does any short
#: token of letters, digits, ``-`` and ``_``.  The gateway's schema and the client check the same.
JOB_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"
GATEWAY_MAX_BODY_BYTES = 32 * 1024 * 1024  # a POST body larger than this gets 413
GATEWAY_MAX_INPUTS = 16  # input files per job
GATEWAY_MAX_INPUT_BYTES = 16 * 1024 * 1024  # one input file, decoded
GATEWAY_MAX_JOB_TIMEOUT_S = 24 * 3600  # the largest timeout_s a job may ask for
GATEWAY_HTTP_THREADS = 8  # threads for the routes' blocking work (SQLite, files) in `ryla serve`
MODAL_GATEWAY_HTTP_THREADS = 40  # on Modal that work waits on modal.Dict calls over the network
GATEWAY_MAX_PENDING_JOBS = 1000  # queued + running jobs before POST /jobs answers 429
GENERATE_WAIT_S = 120.0  # POST /generate waits this long (Modal answers 303 after 150 s)
GENERATE_INLINE_MAX_BYTES = 24 * 1024 * 1024  # outputs inlined in a /generate answer, all together
GATEWAY_PROGRESS_MIN_INTERVAL_S = 0.2  # progress written to the job store at most 5/s per job
GATEWAY_PROGRESS_LINGER_S = 0.1  # a long poll holds a non-final change this long for the next
GATEWAY_STORE_POLL_S = 0.5  # long polls re-read a store that cannot notify (modal.Dict) this often
OBJECT_INFO_TIMEOUT_S = 30.0  # GET /object_info (~0.5 MB from a real ComfyUI)
OBJECT_INFO_WAIT_S = 2.0  # a request waits this long for a fetch in flight, then goes unchecked
OBJECT_INFO_RETRY_S = 30.0  # after a failed fetch, validation is skipped this long before a retry
OBJECT_INFO_REFRESH_MIN_AGE_S = 5.0  # a rejected workflow re-checks against object_info this old
SERVE_HOST = "127.0.0.1"
SERVE_PORT = 8000
SERVE_DATA_DIR = ".ryla/serve"
SERVE_WORKERS = 4  # jobs handed to ComfyUI at once (it runs one at a time; the rest wait there)
SERVE_SHUTDOWN_GRACE_S = 5.0  # on exit, running jobs get this long to stop after the interrupt
SERVE_RETRY_AFTER_S = 2.0  # Retry-After of the 503 a stopping `ryla serve` answers
SERVE_GRACEFUL_HTTP_S = 3.0  # uvicorn waits this long for open requests (long polls) on exit

# --- webhooks (gateway/webhooks.py; each has a RYLA_WEBHOOK_* variable, see WebhookSettings) -----
WEBHOOK_ATTEMPT_TIMEOUT_S = 10.0  # one delivery attempt, connect to last byte (a total deadline)
WEBHOOK_RETRY_INITIAL_S = 2.0  # the first retry comes within this (jittered down, never up)
WEBHOOK_RETRY_MAX_S = 600.0  # backoff doubles per attempt up to this many seconds between tries
WEBHOOK_RETRY_BUDGET_S = 24 * 3600.0  # after the job's final status, retries stop after this long
WEBHOOK_POLL_S = 1.0  # the deliverer looks for due deliveries at least this often
WEBHOOK_DICT_SCAN_S = 15.0  # on Modal, the pending deliveries in the Dict are re-read this often
WEBHOOK_CLAIM_LEASE_S = 60.0  # on Modal, an attempt claimed this long ago may be taken over
WEBHOOK_MAX_URL_CHARS = 2048
WEBHOOK_SIGNATURE_TOLERANCE_S = 300  # Standard Webhooks: a timestamp older or newer is refused
WEBHOOK_CONCURRENCY = 4  # deliveries in flight at once, per gateway process
