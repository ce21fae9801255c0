"""Where consoles are: libvirt (the only importer of libvirt), domain XML, static consoles."""
