terraform {
  # optional() object attributes (1.3), startswith() (1.5).
  required_version = ">= 1.5.0"

  required_providers {
    google = {
      source  = "hashicorp/google"
      version = ">= 6.0.0, < 9.0.0"
    }
  }
}
