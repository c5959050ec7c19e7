"""The local lab fleet: node image, podman nodes on a project bridge, Terraform driver."""
