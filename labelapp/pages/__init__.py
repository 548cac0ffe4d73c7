"""HTML pages: views, their url confs, the keymap and the markdown renderer. Views parse the request, call a service or selector, and render."""
