/* Calls the library that `gradc build examples/aot/model.py -o OUT --format c` writes.
 *
 *   cc -O2 -I OUT examples/aot/driver.c -L OUT -lmodel -Wl,-rpath,OUT -lm -o OUT/driver && OUT/driver
 *
 * Prints one line per result, `name value...`, with 17 significant digits.
 */
#include <stdio.h>

#include "model.h"

static void show(const char *name, const double *v, int n) {
    printf("%s", name);
    for (int i = 0; i < n; i++) printf(" %.17g", v[i]);
    printf("\n");
}

int main(void) {
    double value, da, db, dc, g[3];
    int status = 0;

    status |= J_value(5.0, 3.0, 2.0, &value);
    show("J_value", &value, 1);
    status |= J_grad(5.0, 3.0, 2.0, &g[0], &g[1], &g[2]);
    show("J_grad", g, 3);
    status |= J_value_and_grad(5.0, 3.0, 2.0, &value, &da, &db, &dc);
    show("J_value_and_grad", &value, 1);
    show("J_value_and_grad.grad", (double[]){da, db, dc}, 3);

    double x[20], dx[20];
    for (int i = 0; i < 20; i++) x[i] = -1.2 + 0.1 * i;  /* -1.2, -1.1, ..., 0.7 */
    status |= rosen_value_and_grad(x, &value, dx);
    show("rosen_value_and_grad", &value, 1);
    show("rosen_value_and_grad.grad", dx, 20);

    printf("status %d\n", status);
    return status != 0;
}
