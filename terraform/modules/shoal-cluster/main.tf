locals {
  bootstrap_zone         = coalesce(var.bootstrap_zone, "${var.region}-a")
  bootstrap_machine_type = coalesce(var.bootstrap_machine_type, var.machine_type)
  bootstrap_internal_ip  = coalesce(var.bootstrap_internal_ip, cidrhost(var.subnet_cidr, 10))
  bootstrap_name         = "${var.name}-bootstrap"
  data_disk_device       = "shoal-data" # /dev/disk/by-id/google-shoal-data on the bootstrap node

  node_tag      = "${var.name}-node"      # every node: libp2p and Kubo swarm between nodes
  bootstrap_tag = "${var.name}-bootstrap" # the API
  compute_tag   = "${var.name}-compute"   # health checks

  create_service_account = var.service_account_email == null
  service_account_email  = local.create_service_account ? google_service_account.nodes[0].email : var.service_account_email

  # Install-time pins, rendered into the script; everything a node reads at boot is metadata.
  startup_script = templatefile("${path.module}/templates/startup.sh.tftpl", {
    shoal_version = var.shoal_version
    shoal_package = replace(var.shoal_package, "{version}", var.shoal_version)
    kubo_version  = var.kubo_version
  })

  limit_metadata = { for k, v in var.limits : "shoal-limit-${replace(k, "_", "-")}" => v }

  common_metadata = merge(local.limit_metadata, {
    "startup-script"          = local.startup_script
    "enable-guest-attributes" = "TRUE"
    "enable-oslogin"          = "TRUE"
    "shoal-p2p-port"          = tostring(var.p2p_port)
    "shoal-api-port"          = tostring(var.api_port)
    "shoal-kubo-swarm-port"   = tostring(var.kubo_swarm_port)
    "shoal-log-level"         = var.log_level
    "shoal-extra-peers"       = join(" ", var.extra_peers)
    "shoal-network-key"       = local.network_key
    "shoal-authorized-keys"   = join("\n", var.authorized_keys)
    "shoal-allow-network"     = tostring(var.allow_network)
    "shoal-ops-agent"         = tostring(var.ops_agent)
    "shoal-cluster-name"      = var.name
  })

  # The series the autoscaler scales on: the bootstrap's gauges, as the Ops Agent's Prometheus receiver
  # writes them (resource prometheus_target; its job label is the scrape job, named after the node).
  waiting_metrics = var.waiting_work_per_node > 0 ? ["shoal_jobs_waiting", "shoal_sweep_indexes_waiting"] : []

  network_key = coalesce(var.network_key, terraform_data.network_key.output)

  labels = merge(var.labels, { "shoal-cluster" = var.name })
}

# ---------------------------------------------------------------------------------------------
# The private network's key (shoal serve --network-key): only nodes holding it can connect to
# the cluster's nodes. Made here once, at the first apply: 64 hex digits from two random UUIDs
# (Terraform's uuid() reads crypto/rand; 244 random bits), then kept (ignore_changes), with no
# provider beyond google. It lives in the Terraform state and the instance metadata (readable by
# project members with compute.instances.get), never in the repository. var.network_key
# overrides it (clusters that peer share one key); output network_key gives it to other nodes.
# ---------------------------------------------------------------------------------------------

resource "terraform_data" "network_key" {
  input = sha256("${uuid()}${uuid()}")

  lifecycle {
    ignore_changes = [input]
  }
}

# ---------------------------------------------------------------------------------------------
# Network: a VPC of its own, one subnet, Cloud NAT for egress (package installs).
# ---------------------------------------------------------------------------------------------

resource "google_compute_network" "shoal" {
  project                 = var.project_id
  name                    = "${var.name}-net"
  auto_create_subnetworks = false
}

resource "google_compute_subnetwork" "shoal" {
  project                  = var.project_id
  name                     = "${var.name}-subnet"
  region                   = var.region
  network                  = google_compute_network.shoal.id
  ip_cidr_range            = var.subnet_cidr
  private_ip_google_access = true
}

resource "google_compute_router" "shoal" {
  project = var.project_id
  name    = "${var.name}-router"
  region  = var.region
  network = google_compute_network.shoal.id
}

resource "google_compute_router_nat" "shoal" {
  project                            = var.project_id
  name                               = "${var.name}-nat"
  region                             = var.region
  router                             = google_compute_router.shoal.name
  nat_ip_allocate_option             = "AUTO_ONLY"
  source_subnetwork_ip_ranges_to_nat = "ALL_SUBNETWORKS_ALL_IP_RANGES"
}

# ---------------------------------------------------------------------------------------------
# Firewall. A VPC denies all ingress unless a rule allows it; these rules allow only what Shoal
# needs, and one high-priority rule denies Kubo's RPC port outright whatever else is added.
# ---------------------------------------------------------------------------------------------

resource "google_compute_firewall" "deny_kubo_rpc" {
  project     = var.project_id
  name        = "${var.name}-deny-kubo-rpc"
  network     = google_compute_network.shoal.id
  description = "Kubo's RPC API (5001) gives full control of the daemon: never reachable from the network."
  direction   = "INGRESS"
  priority    = 100
  deny {
    protocol = "tcp"
    ports    = ["5001"]
  }
  source_ranges = ["0.0.0.0/0"]
}

resource "google_compute_firewall" "p2p_internal" {
  project     = var.project_id
  name        = "${var.name}-p2p-internal"
  network     = google_compute_network.shoal.id
  description = "Shoal's libp2p port and Kubo's swarm port between the cluster's nodes."
  direction   = "INGRESS"
  priority    = 1000
  allow {
    protocol = "tcp"
    ports    = [tostring(var.p2p_port), tostring(var.kubo_swarm_port)]
  }
  allow {
    protocol = "udp"
    ports    = [tostring(var.kubo_swarm_port)]
  }
  source_tags = [local.node_tag]
  target_tags = [local.node_tag]
}

resource "google_compute_firewall" "p2p_peers" {
  count       = length(var.peer_cidrs) > 0 ? 1 : 0
  project     = var.project_id
  name        = "${var.name}-p2p-peers"
  network     = google_compute_network.shoal.id
  description = "Shoal's libp2p port from other clusters (peer_cidrs)."
  direction   = "INGRESS"
  priority    = 1000
  allow {
    protocol = "tcp"
    ports    = [tostring(var.p2p_port)]
  }
  source_ranges = var.peer_cidrs
  target_tags   = [local.node_tag]
}

resource "google_compute_firewall" "api" {
  count       = length(var.api_allowed_cidrs) > 0 ? 1 : 0
  project     = var.project_id
  name        = "${var.name}-api"
  network     = google_compute_network.shoal.id
  description = "Shoal's REST API on the bootstrap node, from api_allowed_cidrs only."
  direction   = "INGRESS"
  priority    = 1000
  allow {
    protocol = "tcp"
    ports    = [tostring(var.api_port)]
  }
  source_ranges = var.api_allowed_cidrs
  target_tags   = [local.bootstrap_tag]
}

resource "google_compute_firewall" "health_checks" {
  project     = var.project_id
  name        = "${var.name}-health-checks"
  network     = google_compute_network.shoal.id
  description = "Google's health checkers to the libp2p port of compute nodes (autohealing)."
  direction   = "INGRESS"
  priority    = 1000
  allow {
    protocol = "tcp"
    ports    = [tostring(var.p2p_port)]
  }
  source_ranges = ["35.191.0.0/16", "130.211.0.0/22"]
  target_tags   = [local.compute_tag]
}

resource "google_compute_firewall" "ssh" {
  count       = length(var.ssh_allowed_cidrs) > 0 ? 1 : 0
  project     = var.project_id
  name        = "${var.name}-ssh"
  network     = google_compute_network.shoal.id
  description = "SSH to the nodes from ssh_allowed_cidrs."
  direction   = "INGRESS"
  priority    = 1000
  allow {
    protocol = "tcp"
    ports    = ["22"]
  }
  source_ranges = var.ssh_allowed_cidrs
  target_tags   = [local.node_tag]
}

# ---------------------------------------------------------------------------------------------
# Service account. Compute nodes may read the bootstrap node's guest attributes (where it
# publishes its multiaddr) and nothing else of it: a custom role with that one permission,
# granted on the bootstrap instance only.
# ---------------------------------------------------------------------------------------------

resource "google_service_account" "nodes" {
  count        = local.create_service_account ? 1 : 0
  project      = var.project_id
  account_id   = "${var.name}-nodes"
  display_name = "Shoal nodes (${var.name})"
}

resource "google_project_iam_member" "nodes" {
  for_each = local.create_service_account ? toset(["roles/logging.logWriter", "roles/monitoring.metricWriter"]) : toset([])
  project  = var.project_id
  role     = each.value
  member   = "serviceAccount:${local.service_account_email}"
}

resource "google_project_iam_custom_role" "read_guest_attributes" {
  project     = var.project_id
  role_id     = "${replace(var.name, "-", "_")}_read_guest_attributes"
  title       = "Shoal ${var.name}: read the bootstrap node's guest attributes"
  description = "Lets compute nodes read the multiaddr the bootstrap node publishes."
  permissions = ["compute.instances.getGuestAttributes"]
}

resource "google_compute_instance_iam_member" "read_bootstrap_guest_attributes" {
  project       = var.project_id
  zone          = local.bootstrap_zone
  instance_name = google_compute_instance.bootstrap.name
  role          = google_project_iam_custom_role.read_guest_attributes.id
  member        = "serviceAccount:${local.service_account_email}"
}

# ---------------------------------------------------------------------------------------------
# Bootstrap node: static internal and external IPs, and a persistent data disk that holds its
# data dir (/var/lib/shoal: node.key, SQLite store, Kubo repo, the API's TLS key). The keys are
# created on the VM at first boot and never leave it; replacing the VM keeps the disk, hence the
# peer id, the multiaddr and the API's certificate (published as the guest attribute
# shoal/api-cert). Apart from the network key (above), nothing secret is in this module, its
# state or the metadata.
# ---------------------------------------------------------------------------------------------

resource "google_compute_address" "bootstrap_internal" {
  project      = var.project_id
  name         = "${var.name}-bootstrap-internal"
  region       = var.region
  address_type = "INTERNAL"
  subnetwork   = google_compute_subnetwork.shoal.id
  address      = local.bootstrap_internal_ip
}

resource "google_compute_address" "bootstrap_external" {
  project      = var.project_id
  name         = "${var.name}-bootstrap-external"
  region       = var.region
  address_type = "EXTERNAL"
}

resource "google_compute_disk" "bootstrap_data" {
  project = var.project_id
  name    = "${var.name}-bootstrap-data"
  zone    = local.bootstrap_zone
  type    = var.disk_type
  size    = var.data_disk_size_gb
  labels  = local.labels
}

resource "google_compute_instance" "bootstrap" {
  project                   = var.project_id
  name                      = local.bootstrap_name
  zone                      = local.bootstrap_zone
  machine_type              = local.bootstrap_machine_type
  tags                      = [local.node_tag, local.bootstrap_tag]
  labels                    = local.labels
  allow_stopping_for_update = true

  boot_disk {
    initialize_params {
      image = var.image
      size  = var.boot_disk_size_gb
      type  = var.disk_type
    }
  }

  attached_disk {
    source      = google_compute_disk.bootstrap_data.id
    device_name = local.data_disk_device
  }

  network_interface {
    subnetwork = google_compute_subnetwork.shoal.id
    network_ip = google_compute_address.bootstrap_internal.address
    access_config {
      nat_ip = google_compute_address.bootstrap_external.address
    }
  }

  metadata = merge(local.common_metadata, {
    "shoal-role"      = "bootstrap"
    "shoal-api-host"  = "0.0.0.0"
    "shoal-data-disk" = local.data_disk_device
  })

  service_account {
    email  = local.service_account_email
    scopes = ["cloud-platform"]
  }

  shielded_instance_config {
    enable_secure_boot          = true
    enable_vtpm                 = true
    enable_integrity_monitoring = true
  }

  lifecycle {
    precondition {
      condition     = cidrhost(var.subnet_cidr, 0) == cidrhost("${local.bootstrap_internal_ip}/${split("/", var.subnet_cidr)[1]}", 0)
      error_message = "bootstrap_internal_ip (${local.bootstrap_internal_ip}) must be inside subnet_cidr (${var.subnet_cidr})."
    }
    precondition {
      condition     = length(distinct([var.p2p_port, var.api_port, var.kubo_swarm_port])) == 3
      error_message = "p2p_port, api_port and kubo_swarm_port must be three different ports."
    }
    precondition {
      condition     = startswith(local.bootstrap_zone, "${var.region}-")
      error_message = "bootstrap_zone (${local.bootstrap_zone}) must be a zone of region ${var.region}."
    }
  }

  depends_on = [google_compute_router_nat.shoal]
}

# ---------------------------------------------------------------------------------------------
# Compute nodes: a regional managed instance group from one template, autoscaled on CPU and
# autohealed by a TCP health check on the libp2p port.
# ---------------------------------------------------------------------------------------------

resource "google_compute_instance_template" "compute" {
  project      = var.project_id
  name_prefix  = "${var.name}-compute-"
  region       = var.region
  machine_type = var.machine_type
  tags         = [local.node_tag, local.compute_tag]
  labels       = local.labels

  disk {
    source_image = var.image
    disk_size_gb = var.boot_disk_size_gb
    disk_type    = var.disk_type
    boot         = true
    auto_delete  = true
  }

  network_interface {
    subnetwork = google_compute_subnetwork.shoal.id
    dynamic "access_config" {
      for_each = var.compute_public_ip ? [1] : []
      content {}
    }
  }

  dynamic "guest_accelerator" {
    for_each = var.gpu_type == null ? [] : [var.gpu_type]
    content {
      type  = guest_accelerator.value
      count = var.gpu_count
    }
  }

  # GPUs cannot live-migrate, nor can Spot VMs: both stop for host maintenance.
  scheduling {
    provisioning_model          = var.spot ? "SPOT" : "STANDARD"
    preemptible                 = var.spot
    automatic_restart           = !var.spot
    on_host_maintenance         = var.spot || var.gpu_count > 0 ? "TERMINATE" : "MIGRATE"
    instance_termination_action = var.spot ? "DELETE" : null
  }

  metadata = merge(local.common_metadata, {
    "shoal-gpu-count"          = tostring(var.gpu_count)
    "shoal-role"               = "compute"
    "shoal-api-host"           = "127.0.0.1"
    "shoal-bootstrap-instance" = "projects/${var.project_id}/zones/${local.bootstrap_zone}/instances/${local.bootstrap_name}"
  })

  service_account {
    email  = local.service_account_email
    scopes = ["cloud-platform"]
  }

  shielded_instance_config {
    enable_secure_boot          = var.gpu_count == 0 # the NVIDIA driver's kernel module is not signed for Secure Boot
    enable_vtpm                 = true
    enable_integrity_monitoring = true
  }

  lifecycle {
    create_before_destroy = true
    precondition {
      condition     = alltrue([for z in var.compute_zones : startswith(z, "${var.region}-")])
      error_message = "compute_zones must all be zones of region ${var.region}."
    }
  }
}

resource "google_compute_health_check" "compute" {
  project             = var.project_id
  name                = "${var.name}-compute-p2p"
  check_interval_sec  = 30
  timeout_sec         = 10
  healthy_threshold   = 1
  unhealthy_threshold = 4
  tcp_health_check {
    port = var.p2p_port
  }
}

resource "google_compute_region_instance_group_manager" "compute" {
  project                   = var.project_id
  name                      = "${var.name}-compute"
  region                    = var.region
  base_instance_name        = "${var.name}-compute"
  distribution_policy_zones = length(var.compute_zones) > 0 ? var.compute_zones : null

  version {
    instance_template = google_compute_instance_template.compute.self_link
  }

  named_port {
    name = "libp2p"
    port = var.p2p_port
  }

  auto_healing_policies {
    health_check      = google_compute_health_check.compute.id
    initial_delay_sec = var.autohealing_initial_delay_sec
  }

  update_policy {
    type                  = "PROACTIVE"
    minimal_action        = "REPLACE"
    max_surge_fixed       = max(3, length(var.compute_zones))
    max_unavailable_fixed = 0
  }

  # The bootstrap node must exist (and compute nodes may read its guest attributes) first; the
  # compute nodes' startup scripts then wait for its multiaddr.
  depends_on = [google_compute_instance_iam_member.read_bootstrap_guest_attributes]
}

resource "google_compute_region_autoscaler" "compute" {
  project = var.project_id
  name    = "${var.name}-compute"
  region  = var.region
  target  = google_compute_region_instance_group_manager.compute.id

  autoscaling_policy {
    min_replicas    = var.min_nodes
    max_replicas    = var.max_nodes
    cooldown_period = var.autoscaler_cooldown_sec
    cpu_utilization {
      target = var.cpu_target
    }
    # Waiting work, summed for the group: one node per waiting_work_per_node jobs (or sweep indexes)
    # short of capacity on the bootstrap node. The autoscaler follows whichever signal wants more nodes.
    dynamic "metric" {
      for_each = local.waiting_metrics
      content {
        name                       = "prometheus.googleapis.com/${metric.value}/gauge"
        filter                     = "resource.type = \"prometheus_target\" AND resource.labels.job = \"${local.bootstrap_name}\""
        single_instance_assignment = var.waiting_work_per_node
      }
    }
  }

  lifecycle {
    precondition {
      condition     = var.min_nodes <= var.max_nodes
      error_message = "min_nodes (${var.min_nodes}) must not exceed max_nodes (${var.max_nodes})."
    }
    precondition {
      condition     = var.waiting_work_per_node == 0 || var.ops_agent
      error_message = "waiting_work_per_node needs ops_agent = true (the Ops Agent exports the waiting work the autoscaler reads)."
    }
    precondition {
      condition     = var.gpu_type == null || var.gpu_count > 0
      error_message = "gpu_type needs gpu_count > 0 (how many of them each compute node gets)."
    }
  }
}

# Read only when asked: before the bootstrap node's first boot has published them, the read fails.
data "google_compute_instance_guest_attributes" "bootstrap" {
  count      = var.read_bootstrap_multiaddr ? 1 : 0
  project    = var.project_id
  zone       = local.bootstrap_zone
  name       = google_compute_instance.bootstrap.name
  query_path = "shoal/"
}

locals {
  published = var.read_bootstrap_multiaddr ? {
    for item in data.google_compute_instance_guest_attributes.bootstrap[0].query_value : item.key => item.value
  } : {}
}
