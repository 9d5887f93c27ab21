variable "project_id" {
  description = "GCP project that gets the cluster."
  type        = string
}

variable "region" {
  description = "Region of the cluster."
  type        = string
  default     = "europe-west4"
}

variable "api_allowed_cidrs" {
  description = "CIDR blocks that may use the API."
  type        = list(string)
  default     = []
}

variable "peer_cidrs" {
  description = "CIDR blocks of partner clusters that may dial this cluster's libp2p port."
  type        = list(string)
  default     = []
}

variable "extra_peers" {
  description = "Multiaddrs of partner clusters' bootstrap nodes (their bootstrap_multiaddr output)."
  type        = list(string)
  default     = []
}

variable "network_key" {
  description = "The partner cluster's network key (its network_key output, 64 hex digits), so both clusters are one private network. Null: a key of this cluster's own. Pass it as TF_VAR_network_key, not in a committed file."
  type        = string
  default     = null
  sensitive   = true
}

variable "authorized_keys" {
  description = "Client keys that may use the API (`shoal key show`), each optionally followed by capabilities."
  type        = list(string)
  default     = []
}

variable "shoal_version" {
  description = "Shoal version the nodes run."
  type        = string
  default     = "0.1.0"
}

variable "shoal_package" {
  description = "Wheel URL or git+https requirement for Shoal; {version} is replaced by shoal_version."
  type        = string
}

variable "read_bootstrap_multiaddr" {
  description = "Read the bootstrap node's published multiaddr (set true once it has booted)."
  type        = bool
  default     = false
}
