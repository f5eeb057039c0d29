# Chart for bench/compare.sh: req/s per setup (loadtest, wrk keep-alive and wrk with a new
# connection per request) and failed requests during the
# reloads (pm2 vs supervisor, keep-alive and Connection: close).
#   gnuplot -e "rps='compare-rps.dat'; rel='compare-reload.dat'; out='compare.png'; subtitle='...'; ltlabel='loadtest ...'" compare.gp
# Data files: one row per bar group, a quoted label then the values; NaN = not measured.
set terminal pngcairo size 1300,520 font "sans,10"
set output out
set multiplot title "bench/compare.sh: ".subtitle font "sans,12"
set tmargin 4
set bmargin 6
set style data histograms
set style histogram clustered gap 1
set style fill solid 0.85 border -1
set boxwidth 0.9
set grid ytics
set key top left
set yrange [0:*]
set offsets 0, 0, graph 0.12, 0
set xtics rotate by 20 right nomirror

set title "throughput on /heavy (requests/s)"
set origin 0, 0
set size 0.6, 0.95
plot rps using 2:xtic(1) title ltlabel lc rgb "#8c8c8c", \
     '' using 3 title "wrk, keep-alive" lc rgb "#2b6cb0", \
     '' using 4 title "wrk, new connection per request" lc rgb "#7fb3d5", \
     '' using ($0-0.225):2:(sprintf("%.0f", $2)) with labels font "sans,8" offset 0,0.7 notitle, \
     '' using ($0):3:(sprintf("%.0f", $3)) with labels font "sans,8" offset 0,0.7 notitle, \
     '' using ($0+0.225):4:(sprintf("%.0f", $4)) with labels font "sans,8" offset 0,0.7 notitle

set title "failed requests during the reloads"
set origin 0.6, 0
set size 0.4, 0.95
set key top right
plot rel using 2:xtic(1) title "pm2 reload" lc rgb "#c0392b", \
     '' using 3 title "supervisor reload" lc rgb "#2e8b57", \
     '' using ($0-1.0/6):2:(sprintf("%.0f", $2)) with labels offset 0,0.7 notitle, \
     '' using ($0+1.0/6):3:(sprintf("%.0f", $3)) with labels offset 0,0.7 notitle
unset multiplot
