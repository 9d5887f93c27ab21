output "api_url" {
  description = "Shoal's REST API on the bootstrap node, over HTTPS (reachable from api_allowed_cidrs): use it as --api or SHOAL_API, with api_cert as --ca-cert or SHOAL_CA_CERT."
  value       = "https://${google_compute_address.bootstrap_external.address}:${var.api_port}"
}

output "api_cert" {
  description = "The bootstrap API's self-signed certificate (PEM), made on the node at its first boot: save it and pass it as --ca-cert or SHOAL_CA_CERT. Null until read_bootstrap_multiaddr = true; api_cert_command reads it any time."
  value       = lookup(local.published, "api-cert", null)
}

output "api_cert_command" {
  description = "gcloud command that prints the bootstrap API's certificate (PEM)."
  value       = "gcloud compute instances get-guest-attributes ${google_compute_instance.bootstrap.name} --project ${var.project_id} --zone ${local.bootstrap_zone} --query-path shoal/api-cert --format 'value(value)'"
}

output "bootstrap_multiaddr" {
  description = "The bootstrap node's public multiaddr, /ip4/EXTERNAL_IP/tcp/P2P_PORT/p2p/PEER_ID, for other clusters' extra_peers. Null until read_bootstrap_multiaddr = true (the peer id exists only once the node has booted); bootstrap_multiaddr_command reads it any time."
  value       = lookup(local.published, "external-multiaddr", null)
}

output "bootstrap_internal_multiaddr" {
  description = "The multiaddr compute nodes dial, /ip4/INTERNAL_IP/tcp/P2P_PORT/p2p/PEER_ID. Null until read_bootstrap_multiaddr = true."
  value       = lookup(local.published, "multiaddr", null)
}

output "bootstrap_peer_id" {
  description = "The bootstrap node's libp2p peer id (its key is on its data disk). Null until read_bootstrap_multiaddr = true."
  value       = lookup(local.published, "peer-id", null)
}

output "bootstrap_multiaddr_prefix" {
  description = "The bootstrap node's public multiaddr without its peer id: fixed by this configuration before the node boots."
  value       = "/ip4/${google_compute_address.bootstrap_external.address}/tcp/${var.p2p_port}/p2p/"
}

output "bootstrap_multiaddr_command" {
  description = "gcloud command that prints the bootstrap node's published public multiaddr."
  value       = "gcloud compute instances get-guest-attributes ${google_compute_instance.bootstrap.name} --project ${var.project_id} --zone ${local.bootstrap_zone} --query-path shoal/external-multiaddr --format 'value(value)'"
}

output "bootstrap_external_ip" {
  description = "Static external IP of the bootstrap node."
  value       = google_compute_address.bootstrap_external.address
}

output "bootstrap_internal_ip" {
  description = "Static internal IP of the bootstrap node."
  value       = google_compute_address.bootstrap_internal.address
}

output "network" {
  description = "Self link of the cluster's VPC network."
  value       = google_compute_network.shoal.self_link
}

output "subnetwork" {
  description = "Self link of the cluster's subnet."
  value       = google_compute_subnetwork.shoal.self_link
}

output "instance_group" {
  description = "The compute nodes' regional managed instance group."
  value       = google_compute_region_instance_group_manager.compute.instance_group
}

output "service_account_email" {
  description = "Service account the nodes run as."
  value       = local.service_account_email
}

output "network_key" {
  description = "The cluster's private-network key (64 hex digits). A node outside the cluster joins with it: terraform output -raw network_key > network.key; shoal serve --network-key network.key --peer BOOTSTRAP_MULTIADDR."
  value       = local.network_key
  sensitive   = true
}
