# Plans (and mock applies) of the whole module against a mocked Google provider: no cloud, no
# credentials. Needs Terraform >= 1.7 and the hashicorp/google provider installed (its schema
# is what the mock follows): scripts/install-terraform --google-provider builds one into the
# local filesystem mirror. Run by tests/integration/test_terraform_static.py, or by hand:
#   cd terraform/modules/shoal-cluster && terraform init -backend=false && terraform test

mock_provider "google" {}

variables {
  project_id    = "shoal-test-project"
  shoal_version = "0.1.0"
  shoal_package = "https://storage.googleapis.com/shoal-wheels/shoal-{version}-py3-none-any.whl"
}

run "defaults" {
  command = plan

  assert {
    condition     = length(google_compute_firewall.api) == 0 && length(google_compute_firewall.ssh) == 0 && length(google_compute_firewall.p2p_peers) == 0
    error_message = "with no CIDRs given, neither the API, SSH nor other clusters may get a firewall rule"
  }
  assert {
    condition = (
      one(google_compute_firewall.deny_kubo_rpc.deny).protocol == "tcp" &&
      one(google_compute_firewall.deny_kubo_rpc.deny).ports == tolist(["5001"]) &&
      google_compute_firewall.deny_kubo_rpc.priority == 100 &&
      google_compute_firewall.deny_kubo_rpc.source_ranges == toset(["0.0.0.0/0"])
    )
    error_message = "Kubo's RPC port must be denied from everywhere at a priority above every allow rule"
  }
  assert {
    condition = !contains(flatten([
      for rule in [google_compute_firewall.p2p_internal, google_compute_firewall.health_checks] : [for a in rule.allow : a.ports]
    ]), "5001")
    error_message = "no rule may allow Kubo's RPC port"
  }
  assert {
    condition     = google_compute_firewall.p2p_internal.source_tags == toset(["shoal-node"]) && google_compute_firewall.p2p_internal.target_tags == toset(["shoal-node"])
    error_message = "the libp2p port must be open between the cluster's nodes (by tag)"
  }
  assert {
    condition     = google_compute_instance.bootstrap.metadata["shoal-role"] == "bootstrap" && google_compute_instance.bootstrap.metadata["enable-guest-attributes"] == "TRUE" && google_compute_instance.bootstrap.metadata["shoal-api-host"] == "0.0.0.0"
    error_message = "bootstrap metadata: role, guest attributes (where it publishes its multiaddr), API on all interfaces"
  }
  assert {
    condition     = strcontains(google_compute_instance.bootstrap.metadata["startup-script"], "SHOAL_PACKAGE='https://storage.googleapis.com/shoal-wheels/shoal-0.1.0-py3-none-any.whl'")
    error_message = "the startup script must pin the package with {version} replaced"
  }
  assert {
    condition     = strcontains(google_compute_instance.bootstrap.metadata["startup-script"], "SHOAL_VERSION='0.1.0'") && strcontains(google_compute_instance.bootstrap.metadata["startup-script"], "KUBO_VERSION='v0.40.1'")
    error_message = "the startup script must pin Shoal's and Kubo's versions"
  }
  assert {
    condition     = google_compute_address.bootstrap_internal.address == "10.40.0.10" && google_compute_address.bootstrap_internal.address_type == "INTERNAL"
    error_message = "the bootstrap's static internal IP defaults to the subnet's 10th address"
  }
  assert {
    condition     = one(google_compute_instance.bootstrap.attached_disk).device_name == "shoal-data" && google_compute_instance.bootstrap.metadata["shoal-data-disk"] == "shoal-data"
    error_message = "the data disk's device name must be the one the startup script mounts"
  }
  assert {
    condition     = google_compute_instance_template.compute.metadata["shoal-role"] == "compute" && google_compute_instance_template.compute.metadata["shoal-api-host"] == "127.0.0.1"
    error_message = "compute nodes: role compute, API on loopback only"
  }
  assert {
    condition     = google_compute_instance_template.compute.metadata["shoal-bootstrap-instance"] == "projects/shoal-test-project/zones/us-central1-a/instances/shoal-bootstrap"
    error_message = "compute nodes must be told which instance's guest attributes hold the bootstrap multiaddr"
  }
  assert {
    condition     = length(google_compute_instance_template.compute.network_interface[0].access_config) == 0
    error_message = "compute nodes get no external IP by default"
  }
  assert {
    condition     = length([for k in keys(google_compute_instance.bootstrap.metadata) : k if startswith(k, "shoal-limit-")]) == 0
    error_message = "no limits given: no limit metadata"
  }
  assert {
    condition = (
      google_compute_region_autoscaler.compute.autoscaling_policy[0].min_replicas == 1 &&
      google_compute_region_autoscaler.compute.autoscaling_policy[0].max_replicas == 3 &&
      google_compute_region_autoscaler.compute.autoscaling_policy[0].cpu_utilization[0].target == 0.6
    )
    error_message = "the autoscaler must scale on CPU between min_nodes and max_nodes"
  }
  assert {
    condition = (
      length(google_compute_region_autoscaler.compute.autoscaling_policy[0].metric) == 2 &&
      google_compute_region_autoscaler.compute.autoscaling_policy[0].metric[0].name == "prometheus.googleapis.com/shoal_jobs_waiting/gauge" &&
      google_compute_region_autoscaler.compute.autoscaling_policy[0].metric[0].single_instance_assignment == 4 &&
      google_compute_region_autoscaler.compute.autoscaling_policy[0].metric[0].filter == "resource.type = \"prometheus_target\" AND resource.labels.job = \"shoal-bootstrap\""
    )
    error_message = "the autoscaler also scales on the bootstrap's waiting work, one node per 4 waiting jobs"
  }
  assert {
    condition = (
      google_compute_instance_template.compute.scheduling[0].provisioning_model == "STANDARD" &&
      length(google_compute_instance_template.compute.guest_accelerator) == 0 &&
      google_compute_instance_template.compute.shielded_instance_config[0].enable_secure_boot &&
      google_compute_instance_template.compute.metadata["shoal-gpu-count"] == "0" &&
      google_compute_instance.bootstrap.metadata["shoal-allow-network"] == "false" &&
      google_compute_instance.bootstrap.metadata["shoal-ops-agent"] == "true"
    )
    error_message = "by default: on-demand compute nodes without GPUs, no network for jobs, the Ops Agent on"
  }
  assert {
    condition     = google_project_iam_custom_role.read_guest_attributes.permissions == toset(["compute.instances.getGuestAttributes"]) && google_compute_instance_iam_member.read_bootstrap_guest_attributes.instance_name == "shoal-bootstrap"
    error_message = "compute nodes may read the bootstrap's guest attributes, and only that"
  }
  assert {
    condition     = output.bootstrap_multiaddr == null && length(data.google_compute_instance_guest_attributes.bootstrap) == 0
    error_message = "the published multiaddr is read only when asked"
  }
}

run "cidrs_limits_and_peers" {
  command = plan

  variables {
    api_allowed_cidrs = ["203.0.113.0/24"]
    peer_cidrs        = ["198.51.100.0/24"]
    ssh_allowed_cidrs = ["35.235.240.0/20"]
    extra_peers       = ["/ip4/198.51.100.7/tcp/9700/p2p/12D3KooWRq4vPartnerBootstrapNodeXyZ9aBcDeFgHjKmNpQrStUvWx"]
    compute_public_ip = true
    authorized_keys   = ["q1V3dGhlLW9wZXJhdG9ycy1jbGllbnQta2V5LTAwMDA=", "Hk2fY2ktY2xpZW50LWtleS1vbmx5LXN1Ym1pdHMtMDA= submit,read"]
    limits = {
      job_memory = "2GiB"
      total_cpu  = "3.5"
    }
  }

  assert {
    condition = (
      google_compute_firewall.api[0].source_ranges == toset(["203.0.113.0/24"]) &&
      google_compute_firewall.api[0].target_tags == toset(["shoal-bootstrap"]) &&
      one(google_compute_firewall.api[0].allow).ports == tolist(["8700"])
    )
    error_message = "the API port is open to api_allowed_cidrs, on the bootstrap node only"
  }
  assert {
    condition     = google_compute_firewall.p2p_peers[0].source_ranges == toset(["198.51.100.0/24"]) && one(google_compute_firewall.p2p_peers[0].allow).ports == tolist(["9700"])
    error_message = "only the libp2p port is open to peer_cidrs"
  }
  assert {
    condition     = google_compute_firewall.ssh[0].source_ranges == toset(["35.235.240.0/20"]) && one(google_compute_firewall.ssh[0].allow).ports == tolist(["22"])
    error_message = "SSH is open to ssh_allowed_cidrs"
  }
  assert {
    condition = alltrue([
      for md in [google_compute_instance.bootstrap.metadata, google_compute_instance_template.compute.metadata] :
      md["shoal-limit-job-memory"] == "2GiB" && md["shoal-limit-total-cpu"] == "3.5" && md["shoal-extra-peers"] == "/ip4/198.51.100.7/tcp/9700/p2p/12D3KooWRq4vPartnerBootstrapNodeXyZ9aBcDeFgHjKmNpQrStUvWx"
    ])
    error_message = "limits and extra peers reach every node's metadata"
  }
  assert {
    condition = alltrue([
      for md in [google_compute_instance.bootstrap.metadata, google_compute_instance_template.compute.metadata] :
      md["shoal-authorized-keys"] == "q1V3dGhlLW9wZXJhdG9ycy1jbGllbnQta2V5LTAwMDA=\nHk2fY2ktY2xpZW50LWtleS1vbmx5LXN1Ym1pdHMtMDA= submit,read"
    ])
    error_message = "the authorized client keys reach every node's metadata, one per line"
  }
  assert {
    condition     = length(google_compute_instance_template.compute.network_interface[0].access_config) == 1
    error_message = "compute_public_ip gives compute nodes an external IP"
  }
}

run "outputs" {
  command = apply

  override_resource {
    target = google_compute_address.bootstrap_external
    values = {
      address = "203.0.113.10"
    }
  }

  assert {
    condition     = output.api_url == "https://203.0.113.10:8700"
    error_message = "api_url is the bootstrap's static external IP and the API port"
  }
  assert {
    condition     = output.bootstrap_multiaddr_prefix == "/ip4/203.0.113.10/tcp/9700/p2p/"
    error_message = "bootstrap_multiaddr_prefix is known before the node boots"
  }
  assert {
    condition     = strcontains(output.bootstrap_multiaddr_command, "get-guest-attributes shoal-bootstrap") && strcontains(output.bootstrap_multiaddr_command, "--zone us-central1-a")
    error_message = "bootstrap_multiaddr_command reads the bootstrap's guest attribute"
  }
  assert {
    condition = (
      can(regex("^[0-9a-f]{64}$", output.network_key)) &&
      google_compute_instance.bootstrap.metadata["shoal-network-key"] == output.network_key &&
      google_compute_instance_template.compute.metadata["shoal-network-key"] == output.network_key
    )
    error_message = "one generated network key (64 hex digits) reaches every node's metadata and the network_key output"
  }
}

run "a_given_network_key_is_used" {
  command = apply

  variables {
    network_key = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
  }

  assert {
    condition = alltrue([
      for md in [google_compute_instance.bootstrap.metadata, google_compute_instance_template.compute.metadata] :
      md["shoal-network-key"] == "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
    ])
    error_message = "var.network_key (shared with peered clusters) replaces the generated key"
  }
}

run "published_multiaddr_is_read_when_asked" {
  command = apply

  variables {
    read_bootstrap_multiaddr = true
  }

  override_data {
    target = data.google_compute_instance_guest_attributes.bootstrap
    values = {
      query_value = [
        { namespace = "shoal", key = "multiaddr", value = "/ip4/10.40.0.10/tcp/9700/p2p/12D3KooWBootstrapPeer" },
        { namespace = "shoal", key = "external-multiaddr", value = "/ip4/203.0.113.10/tcp/9700/p2p/12D3KooWBootstrapPeer" },
        { namespace = "shoal", key = "peer-id", value = "12D3KooWBootstrapPeer" },
        { namespace = "shoal", key = "api-cert", value = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n" },
      ]
    }
  }

  assert {
    condition     = output.bootstrap_multiaddr == "/ip4/203.0.113.10/tcp/9700/p2p/12D3KooWBootstrapPeer" && output.bootstrap_internal_multiaddr == "/ip4/10.40.0.10/tcp/9700/p2p/12D3KooWBootstrapPeer" && output.bootstrap_peer_id == "12D3KooWBootstrapPeer"
    error_message = "the outputs carry what the bootstrap node published"
  }
  assert {
    condition     = output.api_cert == "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
    error_message = "api_cert is the certificate the bootstrap node published"
  }
}

run "min_above_max_is_refused" {
  command = plan
  variables {
    min_nodes = 5
    max_nodes = 2
  }
  expect_failures = [google_compute_region_autoscaler.compute]
}

run "bootstrap_ip_outside_the_subnet_is_refused" {
  command = plan
  variables {
    bootstrap_internal_ip = "10.99.0.10"
  }
  expect_failures = [google_compute_instance.bootstrap]
}

run "clashing_ports_are_refused" {
  command = plan
  variables {
    p2p_port = 8700
  }
  expect_failures = [google_compute_instance.bootstrap]
}

run "bootstrap_zone_outside_the_region_is_refused" {
  command = plan
  variables {
    bootstrap_zone = "europe-west4-a"
  }
  expect_failures = [google_compute_instance.bootstrap]
}

run "compute_zones_outside_the_region_are_refused" {
  command = plan
  variables {
    compute_zones = ["us-central1-a", "us-east1-b"]
  }
  expect_failures = [google_compute_instance_template.compute]
}

run "gpu_spot_compute_nodes" {
  command = plan
  variables {
    machine_type  = "n1-standard-8"
    gpu_type      = "nvidia-tesla-t4"
    gpu_count     = 2
    spot          = true
    allow_network = true
  }
  assert {
    condition = (
      one(google_compute_instance_template.compute.guest_accelerator).type == "nvidia-tesla-t4" &&
      one(google_compute_instance_template.compute.guest_accelerator).count == 2 &&
      google_compute_instance_template.compute.scheduling[0].provisioning_model == "SPOT" &&
      google_compute_instance_template.compute.scheduling[0].on_host_maintenance == "TERMINATE" &&
      !google_compute_instance_template.compute.shielded_instance_config[0].enable_secure_boot &&
      google_compute_instance_template.compute.metadata["shoal-gpu-count"] == "2" &&
      google_compute_instance_template.compute.metadata["shoal-allow-network"] == "true"
    )
    error_message = "GPU Spot nodes: the accelerator attached, Spot scheduling, no Secure Boot (driver module), metadata"
  }
}

run "waiting_work_needs_the_ops_agent" {
  command = plan
  variables {
    ops_agent = false
  }
  expect_failures = [google_compute_region_autoscaler.compute]
}
