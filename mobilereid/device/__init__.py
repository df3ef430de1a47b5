"""Code that runs on the device (phone, board, emulated board): numpy and one runtime, no torch, no tensorflow."""
