from lmi_runtime.cli import main

main()
