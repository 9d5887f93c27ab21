# A large cluster: a bigger bootstrap node, 3 to 50 compute nodes of 8 vCPUs spread over three
# zones, explicit per-node and per-job limits, the libp2p port open to a partner cluster, and
# that cluster's bootstrap node as an extra peer (with that cluster's network key: both clusters
# are one private network).

module "shoal" {
  source = "../../modules/shoal-cluster"

  project_id = var.project_id
  name       = "shoal-large"
  region     = var.region

  subnet_cidr            = "10.41.0.0/20"
  machine_type           = "n2-standard-8"
  bootstrap_machine_type = "n2-standard-4"
  compute_zones          = ["${var.region}-a", "${var.region}-b", "${var.region}-c"]
  boot_disk_size_gb      = 200
  data_disk_size_gb      = 100
  disk_type              = "pd-ssd"

  min_nodes               = 3
  max_nodes               = 50
  cpu_target              = 0.7
  autoscaler_cooldown_sec = 600

  api_allowed_cidrs = var.api_allowed_cidrs
  authorized_keys   = var.authorized_keys
  peer_cidrs        = var.peer_cidrs
  extra_peers       = var.extra_peers
  network_key       = var.network_key

  shoal_version = var.shoal_version
  shoal_package = var.shoal_package
  kubo_version  = "v0.40.1"

  limits = {
    total_cpu    = "7"
    total_memory = "28GiB"
    total_disk   = "150GiB"
    job_cpu      = "4"
    job_memory   = "16GiB"
    job_disk     = "50GiB"
  }

  labels = {
    team = "compute"
  }

  read_bootstrap_multiaddr = var.read_bootstrap_multiaddr
}
