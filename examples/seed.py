"""The seed's computation graph, J(a, b, c) = 3(a + b*c), with gradc.

Run: python examples/seed.py
"""
import gradc


@gradc.value_and_grad
def J(a, b, c):
    u = b * c
    v = a + u
    return 3 * v


if __name__ == "__main__":
    gradc.explain(J, 5.0, 3.0, 2.0)
    print()
    print(J.source)
    print(J(5.0, 3.0, 2.0))  # (33.0, (3.0, 6.0, 9.0))
