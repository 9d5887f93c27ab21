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

output "api_cert" {
  description = "The API's certificate, to pin with SHOAL_CA_CERT (null until read_bootstrap_multiaddr = true)."
  value       = module.shoal.api_cert
}

output "api_cert_command" {
  description = "Prints the API's certificate at any time."
  value       = module.shoal.api_cert_command
}
