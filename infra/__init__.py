"""Development stack, node image and cluster notes (see README.md "On a cluster")."""
