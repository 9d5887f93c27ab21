# The module's variable validations, run by Terraform itself without the Google provider:
# tests/integration/test_terraform_static.py copies modules/shoal-cluster/variables.tf alone into
# an empty directory (variables need no provider) with this file under tests/, then runs
# `terraform init` and `terraform test` there. Every run is a plan of that provider-less config.

variables {
  project_id    = "shoal-test-project"
  shoal_version = "0.1.0"
  shoal_package = "https://storage.googleapis.com/shoal-wheels/shoal-{version}-py3-none-any.whl"
}

run "defaults_are_valid" {
  command = plan
}

run "a_full_valid_set" {
  command = plan
  variables {
    name                   = "shoal-large"
    region                 = "europe-west4"
    bootstrap_zone         = "europe-west4-b"
    compute_zones          = ["europe-west4-a", "europe-west4-b", "europe-west4-c"]
    subnet_cidr            = "10.41.0.0/20"
    bootstrap_internal_ip  = "10.41.0.5"
    machine_type           = "n2-highcpu-8"
    bootstrap_machine_type = "e2-standard-2"
    min_nodes              = 0
    max_nodes              = 50
    cpu_target             = 0.75
    api_allowed_cidrs      = ["203.0.113.0/24", "198.51.100.7/32"]
    peer_cidrs             = ["192.0.2.0/24"]
    ssh_allowed_cidrs      = ["35.235.240.0/20"]
    extra_peers            = ["/ip4/192.0.2.7/tcp/9700/p2p/12D3KooWRq4vPartnerBootstrapNodeXyZ9aBcDeFgHjKmNpQrStUvWx", "/dns4/shoal.example.org/tcp/9700/p2p/12D3KooWRq4vPartner"]
    shoal_version          = "0.2.0rc1"
    shoal_package          = "git+https://github.com/example/shoal@v{version}"
    kubo_version           = "v0.40.0-rc1"
    log_level              = "DEBUG"
    authorized_keys        = ["q1V3dGhlLW9wZXJhdG9ycy1jbGllbnQta2V5LTAwMDA=", "Hk2fY2ktY2xpZW50LWtleS1vbmx5LXN1Ym1pdHMtMDA submit, read", "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8= cancel"]
    limits = {
      total_cpu    = "7.5"
      total_memory = "28GiB"
      total_disk   = "150GB"
      job_cpu      = "500m"
      job_memory   = "512MiB"
      job_disk     = "1073741824"
    }
  }
}

run "project_id_must_be_a_project_id" {
  command = plan
  variables {
    project_id = "My_Project"
  }
  expect_failures = [var.project_id]
}

run "name_must_be_short_lower_case" {
  command = plan
  variables {
    name = "Shoal-Cluster-With-A-Very-Long-Name"
  }
  expect_failures = [var.name]
}

run "region_must_look_like_a_region" {
  command = plan
  variables {
    region = "us-central1-a"
  }
  expect_failures = [var.region]
}

run "bootstrap_zone_must_look_like_a_zone" {
  command = plan
  variables {
    bootstrap_zone = "us-central1"
  }
  expect_failures = [var.bootstrap_zone]
}

run "compute_zones_must_be_zones" {
  command = plan
  variables {
    compute_zones = ["us-central1-a", "everywhere"]
  }
  expect_failures = [var.compute_zones]
}

run "subnet_must_be_an_ipv4_cidr" {
  command = plan
  variables {
    subnet_cidr = "10.40.0.0"
  }
  expect_failures = [var.subnet_cidr]
}

run "subnet_must_hold_8_addresses" {
  command = plan
  variables {
    subnet_cidr = "10.40.0.0/30"
  }
  expect_failures = [var.subnet_cidr]
}

run "bootstrap_ip_must_be_an_ip" {
  command = plan
  variables {
    bootstrap_internal_ip = "10.40.0.300.1"
  }
  expect_failures = [var.bootstrap_internal_ip]
}

run "p2p_port_must_not_be_kubo_rpc" {
  command = plan
  variables {
    p2p_port = 5001
  }
  expect_failures = [var.p2p_port]
}

run "api_port_must_not_be_kubo_rpc" {
  command = plan
  variables {
    api_port = 5001
  }
  expect_failures = [var.api_port]
}

run "api_port_must_be_unprivileged_and_whole" {
  command = plan
  variables {
    api_port = 80.5
  }
  expect_failures = [var.api_port]
}

run "kubo_swarm_port_must_not_be_kubo_rpc" {
  command = plan
  variables {
    kubo_swarm_port = 5001
  }
  expect_failures = [var.kubo_swarm_port]
}

run "api_cidrs_must_be_cidrs" {
  command = plan
  variables {
    api_allowed_cidrs = ["203.0.113.0/24", "everyone"]
  }
  expect_failures = [var.api_allowed_cidrs]
}

run "peer_cidrs_must_be_cidrs" {
  command = plan
  variables {
    peer_cidrs = ["10.0.0.1"]
  }
  expect_failures = [var.peer_cidrs]
}

run "ssh_cidrs_must_be_cidrs" {
  command = plan
  variables {
    ssh_allowed_cidrs = ["0.0.0.0/33"]
  }
  expect_failures = [var.ssh_allowed_cidrs]
}

run "extra_peers_need_a_peer_id" {
  command = plan
  variables {
    extra_peers = ["/ip4/192.0.2.7/tcp/9700"]
  }
  expect_failures = [var.extra_peers]
}

run "extra_peers_are_base58" {
  command = plan
  variables {
    extra_peers = ["/ip4/192.0.2.7/tcp/9700/p2p/12D3KooW0OIl"]
  }
  expect_failures = [var.extra_peers]
}

run "machine_type_must_look_like_one" {
  command = plan
  variables {
    machine_type = "big machine"
  }
  expect_failures = [var.machine_type]
}

run "bootstrap_machine_type_must_look_like_one" {
  command = plan
  variables {
    bootstrap_machine_type = "E2_STANDARD"
  }
  expect_failures = [var.bootstrap_machine_type]
}

run "boot_disk_at_least_20" {
  command = plan
  variables {
    boot_disk_size_gb = 10
  }
  expect_failures = [var.boot_disk_size_gb]
}

run "data_disk_at_least_10" {
  command = plan
  variables {
    data_disk_size_gb = 5
  }
  expect_failures = [var.data_disk_size_gb]
}

run "disk_type_is_a_pd_type" {
  command = plan
  variables {
    disk_type = "local-ssd"
  }
  expect_failures = [var.disk_type]
}

run "min_nodes_not_negative" {
  command = plan
  variables {
    min_nodes = -1
  }
  expect_failures = [var.min_nodes]
}

run "min_nodes_whole" {
  command = plan
  variables {
    min_nodes = 1.5
  }
  expect_failures = [var.min_nodes]
}

run "max_nodes_at_least_one" {
  command = plan
  variables {
    max_nodes = 0
  }
  expect_failures = [var.max_nodes]
}

run "max_nodes_bounded" {
  command = plan
  variables {
    max_nodes = 5000
  }
  expect_failures = [var.max_nodes]
}

run "cpu_target_is_a_fraction" {
  command = plan
  variables {
    cpu_target = 60
  }
  expect_failures = [var.cpu_target]
}

run "cooldown_at_least_a_minute" {
  command = plan
  variables {
    autoscaler_cooldown_sec = 10
  }
  expect_failures = [var.autoscaler_cooldown_sec]
}

run "autohealing_delay_bounded" {
  command = plan
  variables {
    autohealing_initial_delay_sec = 7200
  }
  expect_failures = [var.autohealing_initial_delay_sec]
}

run "service_account_is_an_email" {
  command = plan
  variables {
    service_account_email = "nodes"
  }
  expect_failures = [var.service_account_email]
}

run "shoal_version_is_a_version" {
  command = plan
  variables {
    shoal_version = "latest"
  }
  expect_failures = [var.shoal_version]
}

run "shoal_package_is_https_wheel_or_git" {
  command = plan
  variables {
    shoal_package = "http://example.org/shoal.whl"
  }
  expect_failures = [var.shoal_package]
}

run "shoal_package_has_no_quotes" {
  command = plan
  variables {
    shoal_package = "https://example.org/x'; rm -rf /; '.whl"
  }
  expect_failures = [var.shoal_package]
}

run "shoal_package_git_needs_a_ref" {
  command = plan
  variables {
    shoal_package = "git+https://github.com/example/shoal"
  }
  expect_failures = [var.shoal_package]
}

run "kubo_version_is_a_tag" {
  command = plan
  variables {
    kubo_version = "0.39"
  }
  expect_failures = [var.kubo_version]
}

run "kubo_version_has_the_cid_rules_shoal_computes" {
  command = plan
  variables {
    kubo_version = "v0.39.0"
  }
  expect_failures = [var.kubo_version]
}

run "log_level_is_known" {
  command = plan
  variables {
    log_level = "verbose"
  }
  expect_failures = [var.log_level]
}

run "cpu_limits_are_cores" {
  command = plan
  variables {
    limits = { job_cpu = "two" }
  }
  expect_failures = [var.limits]
}

run "size_limits_have_units" {
  command = plan
  variables {
    limits = { total_memory = "8 gigs" }
  }
  expect_failures = [var.limits]
}

run "limits_reject_unknown_keys" {
  command = plan
  variables {
    limits = { total_gpu = "1" }
  }
  expect_failures = [var.limits]
}

run "network_key_must_be_64_hex_digits" {
  command = plan
  variables {
    network_key = "not-a-key"
  }
  expect_failures = [var.network_key]
}

run "network_key_in_swarm_key_format_is_refused" {
  command = plan
  variables {
    network_key = "/key/swarm/psk/1.0.0/\n/base16/\n0000000000000000000000000000000000000000000000000000000000000000"
  }
  expect_failures = [var.network_key]
}

run "a_given_network_key_is_valid" {
  command = plan
  variables {
    network_key = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
  }
}

run "authorized_keys_must_be_client_keys" {
  command = plan
  variables {
    authorized_keys = ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIG9wZXJhdG9y"]
  }
  expect_failures = [var.authorized_keys]
}

run "authorized_keys_capabilities_must_be_known" {
  command = plan
  variables {
    authorized_keys = ["q1V3dGhlLW9wZXJhdG9ycy1jbGllbnQta2V5LTAwMDA= root"]
  }
  expect_failures = [var.authorized_keys]
}

run "gpus_spot_network_and_waiting_work_are_valid" {
  command = plan
  variables {
    machine_type          = "n1-standard-8"
    gpu_type              = "nvidia-tesla-t4"
    gpu_count             = 2
    spot                  = true
    allow_network         = true
    ops_agent             = true
    waiting_work_per_node = 10
  }
}

run "gpu_type_must_be_an_nvidia_accelerator" {
  command = plan
  variables {
    gpu_type = "tesla-t4"
  }
  expect_failures = [var.gpu_type]
}

run "gpu_count_must_be_a_small_whole_number" {
  command = plan
  variables {
    gpu_count = 1.5
  }
  expect_failures = [var.gpu_count]
}

run "waiting_work_per_node_cannot_be_negative" {
  command = plan
  variables {
    waiting_work_per_node = -1
  }
  expect_failures = [var.waiting_work_per_node]
}
