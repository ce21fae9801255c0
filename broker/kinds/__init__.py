"""What differs per console kind: for VNC, the RFB machine and the login on the user's behalf."""
