from sim_core.cli import main

main()
