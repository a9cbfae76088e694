# A console-only entry point for the host board (FW-B's tests; main.py runs the application):
#     micropython -X heapsize=64k boards/host_console_main.py --flash DIR [--control SOCK]
# Serves the provisioning console and the control socket, and nothing else.

import sys

from boards import load_board
import console

board = load_board(sys.argv[1:])
console.serve(board, board.flash_root)
