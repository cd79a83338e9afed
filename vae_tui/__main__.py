from vae_tui.cli import main

main()
