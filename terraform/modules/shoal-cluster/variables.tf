# ---------------------------------------------------------------------------------------------
# Where
# ---------------------------------------------------------------------------------------------

variable "project_id" {
  description = "GCP project that gets the cluster."
  type        = string

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{4,28}[a-z0-9]$", var.project_id))
    error_message = "project_id must be a GCP project id: 6-30 characters, lower-case letters, digits and hyphens, starting with a letter."
  }
}

variable "name" {
  description = "Prefix of every resource's name (network, firewall rules, instances, instance group, service account)."
  type        = string
  default     = "shoal"

  validation {
    condition     = can(regex("^[a-z]([-a-z0-9]{0,18}[a-z0-9])?$", var.name))
    error_message = "name must be 1-20 characters of lower-case letters, digits and hyphens, start with a letter and not end with a hyphen."
  }
}

variable "region" {
  description = "Region of the subnet, the bootstrap node and the regional managed instance group."
  type        = string
  default     = "us-central1"

  validation {
    condition     = can(regex("^[a-z]+-[a-z]+[0-9]+$", var.region))
    error_message = "region must look like us-central1 or europe-west4."
  }
}

variable "bootstrap_zone" {
  description = "Zone of the bootstrap node and its data disk; null means the region's zone \"a\" (REGION-a)."
  type        = string
  default     = null

  validation {
    condition     = var.bootstrap_zone == null || can(regex("^[a-z]+-[a-z]+[0-9]+-[a-z]$", var.bootstrap_zone))
    error_message = "bootstrap_zone must look like us-central1-a."
  }
}

variable "compute_zones" {
  description = "Zones the managed instance group spreads compute nodes over; empty means the region's default zones."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for z in var.compute_zones : can(regex("^[a-z]+-[a-z]+[0-9]+-[a-z]$", z))])
    error_message = "compute_zones must be zone names such as us-central1-b."
  }
}

# ---------------------------------------------------------------------------------------------
# Network
# ---------------------------------------------------------------------------------------------

variable "subnet_cidr" {
  description = "Primary IPv4 range of the cluster's subnet."
  type        = string
  default     = "10.40.0.0/24"

  validation {
    condition     = can(cidrhost(var.subnet_cidr, 0)) && can(regex("^([0-9]{1,3}\\.){3}[0-9]{1,3}/([0-9]|[12][0-9])$", var.subnet_cidr))
    error_message = "subnet_cidr must be an IPv4 CIDR block of at least 8 addresses (/29 or larger), e.g. 10.40.0.0/24."
  }
}

variable "bootstrap_internal_ip" {
  description = "Static internal IP of the bootstrap node, inside subnet_cidr; null means the subnet's 10th address."
  type        = string
  default     = null

  validation {
    condition     = var.bootstrap_internal_ip == null || can(regex("^([0-9]{1,3}\\.){3}[0-9]{1,3}$", var.bootstrap_internal_ip))
    error_message = "bootstrap_internal_ip must be an IPv4 address such as 10.40.0.10."
  }
}

variable "p2p_port" {
  description = "TCP port of Shoal's libp2p listener on every node (open between cluster nodes and to peer_cidrs)."
  type        = number
  default     = 9700

  validation {
    condition     = var.p2p_port == floor(var.p2p_port) && var.p2p_port >= 1024 && var.p2p_port <= 65535 && !contains([5001, 8080, 4001], var.p2p_port)
    error_message = "p2p_port must be a whole number in 1024-65535 and not 4001, 5001 or 8080 (Kubo's swarm, RPC and gateway)."
  }
}

variable "api_port" {
  description = "TCP port of Shoal's REST API on the bootstrap node (open only to api_allowed_cidrs)."
  type        = number
  default     = 8700

  validation {
    condition     = var.api_port == floor(var.api_port) && var.api_port >= 1024 && var.api_port <= 65535 && !contains([5001, 8080, 4001], var.api_port)
    error_message = "api_port must be a whole number in 1024-65535 and not 4001, 5001 or 8080 (Kubo's swarm, RPC and gateway)."
  }
}

variable "kubo_swarm_port" {
  description = "TCP/UDP port of Kubo's swarm (content exchange between the cluster's Kubo daemons; open inside the cluster only). Kubo's RPC port 5001 is never opened."
  type        = number
  default     = 4001

  validation {
    condition     = var.kubo_swarm_port == floor(var.kubo_swarm_port) && var.kubo_swarm_port >= 1024 && var.kubo_swarm_port <= 65535 && var.kubo_swarm_port != 5001
    error_message = "kubo_swarm_port must be a whole number in 1024-65535 and not 5001 (Kubo's RPC)."
  }
}

variable "api_allowed_cidrs" {
  description = "IPv4 CIDR blocks allowed to reach the API port of the bootstrap node. Empty: the API is reachable from nowhere outside the VM (use SSH or IAP to reach it)."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for c in var.api_allowed_cidrs : can(cidrhost(c, 0)) && can(regex("^[0-9.]+/[0-9]+$", c))])
    error_message = "api_allowed_cidrs must be IPv4 CIDR blocks such as 203.0.113.0/24."
  }
}

variable "authorized_keys" {
  description = "Client keys that may use the nodes' API, one per entry as `shoal key show` prints it, optionally followed by capabilities (submit, read, cancel, admin; none listed: all). Public keys, not secrets: they go into instance metadata and each node's authorized-keys file. Empty: no client may use the API."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for k in var.authorized_keys : can(regex("^[A-Za-z0-9_-]{43}=?([ ,]+(submit|read|cancel|admin))*$", k))])
    error_message = "authorized_keys entries must be client keys as `shoal key show` prints them (44 characters of urlsafe base64), optionally followed by capabilities: submit, read, cancel, admin."
  }
}

variable "peer_cidrs" {
  description = "IPv4 CIDR blocks of other Shoal clusters (or single nodes) allowed to reach the libp2p port of this cluster's nodes."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for c in var.peer_cidrs : can(cidrhost(c, 0)) && can(regex("^[0-9.]+/[0-9]+$", c))])
    error_message = "peer_cidrs must be IPv4 CIDR blocks such as 198.51.100.0/24."
  }
}

variable "ssh_allowed_cidrs" {
  description = "IPv4 CIDR blocks allowed to SSH (TCP 22) to the nodes. Empty: no SSH rule at all. For IAP TCP forwarding use [\"35.235.240.0/20\"]."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for c in var.ssh_allowed_cidrs : can(cidrhost(c, 0)) && can(regex("^[0-9.]+/[0-9]+$", c))])
    error_message = "ssh_allowed_cidrs must be IPv4 CIDR blocks."
  }
}

variable "extra_peers" {
  description = "Multiaddrs (with /p2p/ peer id) of nodes outside this cluster that every node dials at start, e.g. another cluster's bootstrap_multiaddr."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for p in var.extra_peers : can(regex("^/(ip4|ip6|dns|dns4|dns6)/[^/ ]+/tcp/[0-9]+/p2p/[1-9A-HJ-NP-Za-km-z]+$", p))])
    error_message = "extra_peers must be multiaddrs like /ip4/198.51.100.7/tcp/9700/p2p/12D3KooW..."
  }
}

variable "network_key" {
  description = "The private network's key, 64 hex digits (`shoal network-key new` prints one in its last line). Default: one generated at the first apply. Set the same key in every cluster that peers with this one (extra_peers)."
  type        = string
  default     = null
  sensitive   = true

  validation {
    condition     = var.network_key == null || can(regex("^[0-9a-f]{64}$", var.network_key))
    error_message = "network_key must be 64 lowercase hex digits."
  }
}

variable "allow_network" {
  description = "Give docker jobs that ask for it (shoal docker run --network) network access on every node (shoal serve --allow-network); false: nodes refuse such jobs."
  type        = bool
  default     = false
}

variable "ops_agent" {
  description = "Install Google's Ops Agent on every node, scraping the node's /metrics into Cloud Monitoring (Managed Service for Prometheus). Needed by waiting_work_per_node; dashboards/shoal.json charts it in Grafana."
  type        = bool
  default     = true
}

variable "compute_public_ip" {
  description = "Give compute nodes an ephemeral external IP. false: they reach the internet (package installs) through Cloud NAT only, and other clusters reach them through the bootstrap."
  type        = bool
  default     = false
}

# ---------------------------------------------------------------------------------------------
# Machines
# ---------------------------------------------------------------------------------------------

variable "machine_type" {
  description = "Machine type of the compute nodes."
  type        = string
  default     = "e2-standard-4"

  validation {
    condition     = can(regex("^[a-z][a-z0-9]*-[a-z0-9-]+$", var.machine_type))
    error_message = "machine_type must be a Compute Engine machine type such as e2-standard-4 or n2-highcpu-8."
  }
}

variable "gpu_type" {
  description = "GPU attached to each compute node (guest accelerator), e.g. nvidia-tesla-t4 or nvidia-l4 on an N1 machine_type. null: none attached by the module (accelerator-optimized machine types such as g2-standard-4 come with theirs: set gpu_count alone)."
  type        = string
  default     = null

  validation {
    condition     = var.gpu_type == null || can(regex("^nvidia-[a-z0-9-]+$", var.gpu_type))
    error_message = "gpu_type must be a Compute Engine accelerator type such as nvidia-tesla-t4 or nvidia-l4."
  }
}

variable "gpu_count" {
  description = "GPUs each compute node has (attached as gpu_type, or by a g2/a2 machine_type). Above 0, the startup script installs the NVIDIA driver and container toolkit, the node offers that many GPUs to jobs (shoal serve --limit-total-gpu; jobs ask with --gpu N), and the nodes stop for host maintenance instead of migrating."
  type        = number
  default     = 0

  validation {
    condition     = var.gpu_count == floor(var.gpu_count) && var.gpu_count >= 0 && var.gpu_count <= 16
    error_message = "gpu_count must be a whole number from 0 to 16."
  }
}

variable "spot" {
  description = "Run the compute nodes as Spot VMs (cheaper, preemptible at any time: a preempted node's jobs are re-run elsewhere by their requester). The bootstrap node is never Spot."
  type        = bool
  default     = false
}

variable "bootstrap_machine_type" {
  description = "Machine type of the bootstrap node; null means machine_type."
  type        = string
  default     = null

  validation {
    condition     = var.bootstrap_machine_type == null || can(regex("^[a-z][a-z0-9]*-[a-z0-9-]+$", var.bootstrap_machine_type))
    error_message = "bootstrap_machine_type must be a Compute Engine machine type such as e2-standard-2."
  }
}

variable "image" {
  description = "Boot image of every node. The startup script expects Debian 12 (apt, python3.11, docker.io)."
  type        = string
  default     = "debian-cloud/debian-12"
}

variable "boot_disk_size_gb" {
  description = "Boot disk size of every node, in GB (holds Docker images and the compute nodes' data)."
  type        = number
  default     = 50

  validation {
    condition     = var.boot_disk_size_gb == floor(var.boot_disk_size_gb) && var.boot_disk_size_gb >= 20 && var.boot_disk_size_gb <= 65536
    error_message = "boot_disk_size_gb must be a whole number from 20 to 65536."
  }
}

variable "data_disk_size_gb" {
  description = "Size of the bootstrap node's persistent data disk (node.key, its SQLite store, Kubo repo), in GB."
  type        = number
  default     = 20

  validation {
    condition     = var.data_disk_size_gb == floor(var.data_disk_size_gb) && var.data_disk_size_gb >= 10 && var.data_disk_size_gb <= 65536
    error_message = "data_disk_size_gb must be a whole number from 10 to 65536."
  }
}

variable "disk_type" {
  description = "Disk type of boot and data disks."
  type        = string
  default     = "pd-balanced"

  validation {
    condition     = contains(["pd-standard", "pd-balanced", "pd-ssd"], var.disk_type)
    error_message = "disk_type must be pd-standard, pd-balanced or pd-ssd."
  }
}

variable "min_nodes" {
  description = "Fewest compute nodes the autoscaler keeps (besides the bootstrap node, which also computes)."
  type        = number
  default     = 1

  validation {
    condition     = var.min_nodes == floor(var.min_nodes) && var.min_nodes >= 0 && var.min_nodes <= 1000
    error_message = "min_nodes must be a whole number from 0 to 1000."
  }
}

variable "max_nodes" {
  description = "Most compute nodes the autoscaler may run; at least min_nodes."
  type        = number
  default     = 3

  validation {
    condition     = var.max_nodes == floor(var.max_nodes) && var.max_nodes >= 1 && var.max_nodes <= 1000
    error_message = "max_nodes must be a whole number from 1 to 1000."
  }
}

variable "cpu_target" {
  description = "Average CPU utilisation (0-1) of the compute nodes that the autoscaler aims for."
  type        = number
  default     = 0.6

  validation {
    condition     = var.cpu_target > 0 && var.cpu_target <= 1
    error_message = "cpu_target must be above 0 and at most 1."
  }
}

variable "waiting_work_per_node" {
  description = "Scale on waiting work too: the autoscaler wants one compute node per this many jobs (and, separately, sweep indexes) waiting for capacity on the bootstrap node (its shoal_jobs_waiting and shoal_sweep_indexes_waiting, scraped by the Ops Agent into Cloud Monitoring); it keeps whichever of this and cpu_target asks for more nodes, within min_nodes..max_nodes. 0: CPU only."
  type        = number
  default     = 4

  validation {
    condition     = var.waiting_work_per_node >= 0 && var.waiting_work_per_node <= 10000
    error_message = "waiting_work_per_node must be from 0 (CPU only) to 10000."
  }
}

variable "autoscaler_cooldown_sec" {
  description = "Seconds the autoscaler waits after a node starts before using its CPU reading (covers the startup script's installs)."
  type        = number
  default     = 300

  validation {
    condition     = var.autoscaler_cooldown_sec == floor(var.autoscaler_cooldown_sec) && var.autoscaler_cooldown_sec >= 60
    error_message = "autoscaler_cooldown_sec must be a whole number of at least 60."
  }
}

variable "autohealing_initial_delay_sec" {
  description = "Seconds after a compute node starts before the health check (TCP on p2p_port) may recreate it."
  type        = number
  default     = 900

  validation {
    condition     = var.autohealing_initial_delay_sec == floor(var.autohealing_initial_delay_sec) && var.autohealing_initial_delay_sec >= 0 && var.autohealing_initial_delay_sec <= 3600
    error_message = "autohealing_initial_delay_sec must be a whole number from 0 to 3600."
  }
}

variable "service_account_email" {
  description = "Service account of the nodes; null creates one (logging and monitoring writer, plus read access to the bootstrap node's guest attributes)."
  type        = string
  default     = null

  validation {
    condition     = var.service_account_email == null || can(regex("^[^@ ]+@[^@ ]+\\.iam\\.gserviceaccount\\.com$", var.service_account_email))
    error_message = "service_account_email must be a service account email (...@PROJECT.iam.gserviceaccount.com)."
  }
}

variable "labels" {
  description = "Labels added to instances and disks."
  type        = map(string)
  default     = {}
}

# ---------------------------------------------------------------------------------------------
# Software
# ---------------------------------------------------------------------------------------------

variable "shoal_version" {
  description = "Shoal version every node runs; the startup script fails if shoal_package installs another one."
  type        = string

  validation {
    condition     = can(regex("^[0-9]+\\.[0-9]+\\.[0-9]+([.+-]?[0-9A-Za-z.]+)?$", var.shoal_version))
    error_message = "shoal_version must be a version such as 0.1.0 or 0.2.0rc1."
  }
}

variable "shoal_package" {
  description = "What pip installs: a wheel URL or a git ref, where {version} is replaced by shoal_version. E.g. https://storage.googleapis.com/BUCKET/shoal-{version}-py3-none-any.whl or git+https://github.com/ORG/shoal@v{version}."
  type        = string

  validation {
    condition     = can(regex("^(https://[^ '\"]+\\.whl|git\\+https://[^ '\"@]+@[^ '\"]+)$", var.shoal_package))
    error_message = "shoal_package must be an https:// URL of a .whl file or a git+https://HOST/REPO@REF requirement, without spaces or quotes."
  }
}

variable "kubo_version" {
  description = "Kubo release installed on every node (checksum-verified against its published SHA-512)."
  type        = string
  default     = "v0.40.1" # what scripts/install-kubo builds

  validation {
    condition     = can(regex("^v[0-9]+\\.[0-9]+\\.[0-9]+(-rc[0-9]+)?$", var.kubo_version))
    error_message = "kubo_version must look like v0.40.1."
  }

  validation {
    condition     = !can(regex("^v0\\.([0-9]|[1-3][0-9])\\.", var.kubo_version))
    error_message = "kubo_version must be v0.40.0 or later: Shoal computes CIDs with Kubo 0.40's HAMT sharding rule, and an older Kubo gives some directories other CIDs (their results are then refused as tampered)."
  }
}

variable "log_level" {
  description = "Log level of every node."
  type        = string
  default     = "INFO"

  validation {
    condition     = contains(["DEBUG", "INFO", "WARNING", "ERROR"], var.log_level)
    error_message = "log_level must be DEBUG, INFO, WARNING or ERROR."
  }
}

variable "limits" {
  description = <<-EOT
    Resource limits of every node (shoal serve --limit-*), a map with any of the keys total_cpu,
    total_memory, total_disk (what all jobs together may use; unset: what the machine has) and
    job_cpu, job_memory, job_disk (what one job may use; unset: the total). CPU in cores
    ("2", "0.5", "500m"); sizes in bytes or with a unit ("8GiB", "512MB").
  EOT
  type        = map(string)
  default     = {}

  validation {
    condition     = alltrue([for k in keys(var.limits) : contains(["total_cpu", "total_memory", "total_disk", "job_cpu", "job_memory", "job_disk"], k)])
    error_message = "limits' keys must be among total_cpu, total_memory, total_disk, job_cpu, job_memory and job_disk."
  }

  validation {
    condition = alltrue([
      for k, v in var.limits : can(regex("^([0-9]+(\\.[0-9]+)?|[0-9]+m)$", v)) if endswith(k, "_cpu")
    ])
    error_message = "limits.total_cpu and limits.job_cpu must be a number of cores such as 2, 0.5 or 500m."
  }

  validation {
    condition = alltrue([
      for k, v in var.limits : can(regex("^[0-9]+(\\.[0-9]+)?([KMGTkmgt]i?[Bb]?|[Bb])?$", v)) if !endswith(k, "_cpu")
    ])
    error_message = "limits' memory and disk sizes must be bytes or a number with a unit such as 512MiB, 8GiB or 2GB."
  }
}

variable "read_bootstrap_multiaddr" {
  description = "Read the bootstrap node's published multiaddr (its guest attribute shoal/multiaddr) into the bootstrap_multiaddr output. Leave false on the first apply (the node has not booted yet, and reading then fails); set true once it runs."
  type        = bool
  default     = false
}
