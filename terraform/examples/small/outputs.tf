output "api_url" {
  description = "Shoal's API on the bootstrap node."
  value       = module.shoal.api_url
}

output "bootstrap_multiaddr" {
  description = "The bootstrap node's public multiaddr (null until read_bootstrap_multiaddr = true)."
  value       = module.shoal.bootstrap_multiaddr
}

output "bootstrap_multiaddr_command" {
  description = "Reads the bootstrap node's multiaddr at any time."
  value       = module.shoal.bootstrap_multiaddr_command
}

output "network_key" {
  description = "The cluster's private-network key: terraform output -raw network_key > network.key, for a node that joins it."
  value       = module.shoal.network_key
  sensitive   = true
}
