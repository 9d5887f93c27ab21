# A small cluster: the bootstrap node and one to three compute nodes of 2 vCPUs, the API open to
# one office range, SSH through IAP only.
#
#   terraform init
#   terraform apply -var project_id=my-project -var 'api_allowed_cidrs=["203.0.113.0/24"]' \
#     -var "authorized_keys=[\"$(shoal key show)\"]" \
#     -var shoal_package=https://storage.googleapis.com/my-bucket/shoal-{version}-py3-none-any.whl
#   # a minute or two later, once the bootstrap node has booted:
#   terraform apply -var read_bootstrap_multiaddr=true ...   # fills bootstrap_multiaddr and api_cert
#   terraform output -raw api_cert > shoal-api.pem
#   SHOAL_API=$(terraform output -raw api_url) SHOAL_CA_CERT=shoal-api.pem shoal run noop --concurrency 2

module "shoal" {
  source = "../../modules/shoal-cluster"

  project_id = var.project_id
  name       = "shoal-small"
  region     = var.region

  machine_type = "e2-standard-2"
  min_nodes    = 1
  max_nodes    = 3

  api_allowed_cidrs = var.api_allowed_cidrs
  authorized_keys   = var.authorized_keys
  ssh_allowed_cidrs = ["35.235.240.0/20"] # IAP TCP forwarding

  shoal_version = var.shoal_version
  shoal_package = var.shoal_package

  limits = {
    job_cpu    = "1"
    job_memory = "2GiB"
  }

  read_bootstrap_multiaddr = var.read_bootstrap_multiaddr
}
