from lmi_compile.cli import main

main()
