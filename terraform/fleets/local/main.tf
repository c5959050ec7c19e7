# The local Aegis lab fleet: a project-owned bridge and N podman nodes on it.
# Driven by aegis_lab.fleet (through Terraform's -json interface); state lives
# per fleet outside the source tree (backend path and TF_DATA_DIR set by the driver).

terraform {
  required_version = ">= 1.5.0"
  backend "local" {}
}

variable "lab_cli" {
  description = "Path of the aegis-lab executable."
  type        = string
}

variable "prefix" {
  description = "Per-run prefix (2-8 chars, lowercase letter first) for every host object."
  type        = string
  validation {
    condition     = can(regex("^[a-z][a-z0-9]{1,7}$", var.prefix))
    error_message = "prefix must be 2-8 characters: a lowercase letter, then lowercase letters or digits (it becomes part of 15-character interface names)."
  }
}

variable "nodes" {
  description = "Node name => slot (0-31), address and MAC. The lab computes address and MAC from the slot (aegis_lab.naming); Terraform only forwards them."
  type = map(object({
    slot    = number
    address = string
    mac     = string
  }))
  validation {
    condition     = length(var.nodes) >= 1 && length(var.nodes) <= 32
    error_message = "a local fleet has 1 to 32 nodes; give between 1 and 32 entries in nodes."
  }
  validation {
    condition     = alltrue([for n in keys(var.nodes) : can(regex("^([a-z]|[a-z][a-z0-9-]{0,30}[a-z0-9])$", n))])
    error_message = "node names must be 1-32 characters of lowercase letters, digits and '-', start with a letter and not end with '-' (e.g. node1, web-a)."
  }
  validation {
    condition     = alltrue([for n in values(var.nodes) : n.slot >= 0 && n.slot <= 31 && floor(n.slot) == n.slot]) && length(distinct([for n in values(var.nodes) : n.slot])) == length(var.nodes)
    error_message = "node slots must be distinct whole numbers from 0 to 31."
  }
}

variable "network" {
  description = "The fleet's private IPv4 /24; the bridge takes .1, nodes .10 upwards."
  type        = string
  validation {
    condition     = can(cidrhost(var.network, 0)) && endswith(var.network, "/24")
    error_message = "network must be an IPv4 /24 in CIDR form, e.g. 10.213.7.0/24."
  }
}

variable "image" {
  description = "Podman image reference the nodes boot: the node image (aegis-lab image ensure) or the baked golden image (aegis-lab image bake, localhost/aegis-node-baked:HASH; aegis-lab fleet up --baked). A new image re-creates the nodes."
  type        = string
}

variable "caps" {
  description = "Capability level of every node: base (no SYS_ADMIN/BPF/PERFMON), admin (+SYS_ADMIN: roles that mount or use a scratch netns), agent (+BPF, PERFMON, SYS_PTRACE: the agent under test). See aegis_lab.node.CAPS."
  type        = string
  default     = "base"
  validation {
    condition     = contains(["base", "admin", "agent"], var.caps)
    error_message = "caps must be base, admin or agent."
  }
}

variable "ssh_public_key_file" {
  description = "Public key installed for root on every node."
  type        = string
}

variable "ssh_private_key_file" {
  description = "Matching private key, reported in the fleet output for the inventory."
  type        = string
}

variable "known_hosts_file" {
  description = "known_hosts file where each node's host key is pinned."
  type        = string
}

resource "terraform_data" "bridge" {
  input = {
    lab_cli = var.lab_cli
    prefix  = var.prefix
    network = var.network
  }

  provisioner "local-exec" {
    command = "exec \"$AEGIS_LAB\" bridge up --prefix \"$PREFIX\" --network \"$NETWORK\""
    environment = {
      AEGIS_LAB = self.input.lab_cli
      PREFIX    = self.input.prefix
      NETWORK   = self.input.network
    }
  }

  provisioner "local-exec" {
    when    = destroy
    command = "exec \"$AEGIS_LAB\" bridge down --prefix \"$PREFIX\""
    environment = {
      AEGIS_LAB = self.input.lab_cli
      PREFIX    = self.input.prefix
    }
  }
}

module "node" {
  source   = "../../modules/local_node"
  for_each = var.nodes

  lab_cli             = var.lab_cli
  prefix              = var.prefix
  name                = each.key
  slot                = each.value.slot
  address             = each.value.address
  mac                 = each.value.mac
  network             = var.network
  image               = var.image
  caps                = var.caps
  ssh_public_key_file = var.ssh_public_key_file
  known_hosts_file    = var.known_hosts_file

  depends_on = [terraform_data.bridge]
}

output "fleet" {
  description = "The fleet as the aegis.fleet.fleet inventory plugin reads it."
  value = {
    prefix          = var.prefix
    bridge          = "${var.prefix}-br"
    network         = var.network
    caps            = var.caps
    gateway         = cidrhost(var.network, 1)
    ssh_user        = "root"
    ssh_private_key = var.ssh_private_key_file
    known_hosts     = var.known_hosts_file
    nodes = {
      for name, node in var.nodes : name => {
        address   = node.address
        mac       = node.mac
        container = module.node[name].container
        slot      = node.slot
        id        = module.node[name].id
      }
    }
  }
}
