"""Moving bytes: the generic pump, the VNC connection, the frame reader, zero-copy. No uvicorn, libvirt or tokens."""
