from cortex.sim.cli import main

main()
