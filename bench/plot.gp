# SPDX-License-Identifier: MIT
#
# make bench's plot: gnuplot -e "matrix='M'; netns='N'; out='PNG'; ncols=K;
# title='T'" bench/plot.gp.  Top: GiB/s per cell of the loopback matrix
# (plain), libmultifd against QEMU 7.2 and the cell's limit.  Bottom: the
# netns runs, GiB/s against the tbf rate, one line per codec and channels.
set terminal pngcairo size 1600,1000 font ",9"
set output out
set multiplot layout 2,1 title title
set style data histograms
set style histogram clustered gap 1
set style fill solid 0.8 border -1
set boxwidth 0.9
set grid ytics
set ylabel "GiB/s of guest RAM"
set xtics rotate by -60 scale 0 font ",8"
set key top right
set logscale y
set title "loopback, plain: libmultifd vs QEMU 7.2 vs limit (log scale)"
plot matrix using 2:xtic(1) title "libmultifd", \
     '' using 3 title "QEMU 7.2", \
     '' using 4 title "limit"
set style data linespoints
unset logscale y
unset xtics
set xtics nomirror (1, 10, 25)
set xrange [0.8:32]
set logscale x
set xlabel "tbf rate, Gbit/s"
set title "veth between namespaces, mixed image"
set key top left
plot for [i=2:ncols+1] netns using 1:i title columnhead(i) lw 2
unset multiplot
