# One Aegis lab node: a podman container with systemd as PID 1 on the fleet bridge.
# Uses only Terraform's built-in terraform_data (the registry is unreachable): the
# create- and destroy-time local-exec provisioners call the project's `aegis-lab` CLI,
# which holds the node logic. Everything the destroy step needs is kept in `input`,
# because destroy-time provisioners may only reference `self`.

terraform {
  required_version = ">= 1.5.0"
}

variable "lab_cli" {
  description = "Path of the aegis-lab executable (in the project's virtualenv)."
  type        = string
}

variable "prefix" {
  description = "Per-run prefix carried by every host object of the fleet."
  type        = string
}

variable "name" {
  description = "Node name: hostname and container name suffix."
  type        = string
}

variable "slot" {
  description = "Node slot in the fleet (names its host-side veth)."
  type        = number
}

variable "address" {
  description = "The node's address on the fleet bridge (computed by the lab, forwarded)."
  type        = string
}

variable "mac" {
  description = "The node's fixed MAC (computed by the lab, forwarded)."
  type        = string
}

variable "network" {
  description = "The fleet's IPv4 /24."
  type        = string
}

variable "image" {
  description = "Podman image reference of the node image (plain or baked); a new one re-creates the node."
  type        = string
}

variable "caps" {
  description = "The node's capability level (base, admin, agent); see aegis_lab.node.CAPS."
  type        = string
  default     = "base"
}

variable "ssh_public_key_file" {
  description = "Public key installed for root (management access)."
  type        = string
}

variable "known_hosts_file" {
  description = "Fleet known_hosts where the node's host key is pinned."
  type        = string
}

resource "terraform_data" "node" {
  # A node's capabilities and image are fixed when podman creates it: a new level or a new
  # image (e.g. the baked golden image, `aegis-lab fleet up --baked`) makes a new node.
  triggers_replace = [var.caps, var.image]

  input = {
    lab_cli             = var.lab_cli
    prefix              = var.prefix
    name                = var.name
    slot                = var.slot
    address             = var.address
    mac                 = var.mac
    network             = var.network
    image               = var.image
    caps                = var.caps
    ssh_public_key_file = var.ssh_public_key_file
    known_hosts_file    = var.known_hosts_file
  }

  provisioner "local-exec" {
    command = "exec \"$AEGIS_LAB\" node create --spec-env AEGIS_NODE_SPEC"
    environment = {
      AEGIS_LAB       = self.input.lab_cli
      AEGIS_NODE_SPEC = jsonencode(self.input)
    }
  }

  provisioner "local-exec" {
    when    = destroy
    command = "exec \"$AEGIS_LAB\" node destroy --spec-env AEGIS_NODE_SPEC"
    environment = {
      AEGIS_LAB       = self.input.lab_cli
      AEGIS_NODE_SPEC = jsonencode(self.input)
    }
  }
}

output "address" {
  description = "The node's address on the fleet bridge."
  value       = var.address
}

output "container" {
  description = "The podman container name (break-glass path: podman exec)."
  value       = "${var.prefix}-${var.name}"
}

output "id" {
  description = "Terraform's id of this node instance; changes when the node is replaced."
  value       = terraform_data.node.id
}
